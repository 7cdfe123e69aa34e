"""Long enterprise jobs: their durable state, their media, and which server runs each.

An enterprise request sent with `async=true` becomes a job (api-contract.md §5): a row of the
`jobs` table in the accounts' database (SQLite in the data directory by default, or the
PostgreSQL that `SONGSCAN_DATABASE_URL` names, shared by every API node) and a directory
`DATA/jobs/<id>/` holding its media. The row is the record of the job: its parameters, state
(queued → running → done | failed | cancelled), progress, the ledger reservation that pays for
it and, once finished, the response. So a job outlives the process that runs it, and any node
on the database lists, polls, fetches and cancels it.

Nodes. A node is a data directory (its id is in `DATA/jobs/node`): the media of a job is in
the node that received it (the job's `node`; a `url` job gets the node that first runs it),
so only that node's servers run it. Each node says it is alive in `job_nodes`; a job whose
node has been silent for `[api] job_node_timeout_s` is taken over by another node (a `url` job
is run again there; an upload's job fails, as its media is gone with the node).

Claims. A server process works on a job only while it is the job's `runner`: the id of its
instance lease (`server_leases`, kept alive by its housekeeping). A claim sets it with a
conditional UPDATE (on PostgreSQL after `SELECT … FOR UPDATE SKIP LOCKED`), so two servers,
on one node or two, never claim one job. A `running` job whose runner's lease has expired was
abandoned (its server was killed): the next claim runs it again from the start (a scan's
result does not depend on how it was split, so a rerun gives the same result). Every change a
runner makes is fenced by `runner = me`: a runner that lost its claim cannot overwrite the job.
A runner also holds a lock file in its node's `DATA/jobs` (`runner-<id>.lock`, flock) for as
long as its process lives: when nothing holds it, the process died (the kernel lets go of a
killed process's locks), so the node's next server takes its jobs over at once instead of
waiting for its lease to run out. Without such a file (a runner of another node) the lease
decides.

A finished job has follow-ups (settle its reservation, delete its media) after which its row is
marked `cleaned`. They are idempotent: a crash in between repeats them, never doubles them.

An upgrade from a data directory whose jobs were in `DATA/jobs/jobs.sqlite` imports them (once,
renaming that file `jobs.sqlite.imported`), so no queued or finished job is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, delete, insert, or_, select, update

from songscan.accounts.models import JobNode, JobRow, ServerLease, utcnow
from songscan.accounts.store import insert_ignore, read_only
from songscan.errors import NotFound

log = logging.getLogger("songscan.jobs")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)

# A directory without a row is a submission that died half-way; removed when this old.
ORPHAN_DIR_AGE_S = 3600.0
NODE_FILE = "node"  # in DATA/jobs: this data directory's node id
RUNNER_LOCK = ("runner-", ".lock")  # in DATA/jobs: runner-<id>.lock, held by a live runner
_runner_locks: dict[Path, int] = {}  # this process's runners' lock files, held till it ends
_runner_locks_lock = threading.Lock()
OLD_STORE = "jobs.sqlite"  # where jobs were before they moved into the database


@dataclass(frozen=True)
class JobRecord:
    id: str
    account_id: int
    state: str
    fields: dict[str, str]
    http_method: str
    media_name: str | None
    chunks_total: int | None
    chunks_done: int
    reservation_id: int | None
    reserved: int
    billed: int
    chunks: int
    response: str | None
    media_type: str | None
    error_code: int | None
    error_message: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    cleaned: bool
    node: str | None
    runner: str | None

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        values = dict(row._mapping)
        values["fields"] = json.loads(values["fields"])
        values["cleaned"] = bool(values["cleaned"])
        return cls(**values)


_COLUMNS = tuple(f.name for f in fields(JobRecord))


@dataclass(frozen=True)
class JobClaim:
    """The right of one server instance (`runner`) to work on one job, until `release`."""

    store: JobStore
    job_id: str
    runner: str

    def release(self) -> None:
        self.store.release(self)

    def __enter__(self) -> JobClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def node_id(jobs_dir: Path) -> str:
    """This data directory's node id, made once (atomically: several servers start at once)."""
    path = jobs_dir / NODE_FILE
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    made = jobs_dir / f".{NODE_FILE}-{secrets.token_hex(8)}"
    made.write_text(secrets.token_hex(16) + "\n")
    try:
        os.link(made, path)  # fails if another process made it first: theirs wins
    except FileExistsError:
        pass
    finally:
        made.unlink()
    return path.read_text().strip()


class JobStore:
    """The jobs of every node on one database; this node's media in `DATA/jobs`."""

    def __init__(
        self, engine: Engine, data_dir: str | os.PathLike[str], node_timeout_s: float = 3600.0
    ) -> None:
        self.engine = engine
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.node = node_id(self.root)
        self.node_timeout_s = node_timeout_s
        self._held: set[str] = set()  # the jobs this process's runners hold
        self._held_lock = threading.Lock()
        # Set when this process adds or cancels a job: its runners need not wait for a poll.
        self.changed = threading.Event()
        self._import_old_store()

    def _update(self, job_id: str, *where: ColumnElement[bool], **values: Any) -> bool:
        """Set `values` on the job when `where` holds; whether it did."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(JobRow).where(JobRow.id == job_id, *where).values(**values)
            ).rowcount
        return bool(done == 1)

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    # -- submitting and reading -----------------------------------------------------------
    def create(
        self,
        account_id: int,
        fields: Mapping[str, str],
        http_method: str,
        media: Path | None,
        *,
        chunks_total: int | None,
        reservation_id: int | None,
        reserved: int,
    ) -> JobRecord:
        """A new queued job; `media` (an uploaded file) is moved into the job's directory (on
        this node, which is then the only one to run it)."""
        job_id = secrets.token_hex(16)
        media_name = None
        if media is not None:
            media_name = media.name
            self.job_dir(job_id).mkdir()
            shutil.move(media, self.job_dir(job_id) / media_name)
        with self.engine.begin() as conn:
            conn.execute(
                insert(JobRow).values(
                    id=job_id,
                    account_id=account_id,
                    state=QUEUED,
                    fields=json.dumps(dict(fields)),
                    http_method=http_method,
                    media_name=media_name,
                    chunks_total=chunks_total,
                    chunks_done=0,
                    reservation_id=reservation_id,
                    reserved=reserved,
                    billed=0,
                    chunks=0,
                    attempts=0,
                    created_at=time.time(),
                    cleaned=False,
                    node=self.node if media is not None else None,
                )
            )
        record = self.require(job_id)  # as submitted: a runner may start it at once
        self.changed.set()
        return record

    def get(self, job_id: str) -> JobRecord | None:
        with read_only(self.engine) as conn:
            row = conn.execute(select(*_columns()).where(JobRow.id == job_id)).first()
        return JobRecord.from_row(row) if row is not None else None

    def require(self, job_id: str, account_id: int | None = None) -> JobRecord:
        """The job, or NotFound; with `account_id`, only a job of that account."""
        record = self.get(job_id)
        if record is None or (account_id is not None and record.account_id != account_id):
            raise NotFound(f"no job {job_id[:64]!r} for this api_token")
        return record

    def of_account(self, account_id: int, limit: int) -> list[JobRecord]:
        """An account's jobs, newest first."""
        with read_only(self.engine) as conn:
            rows = conn.execute(
                select(*_columns())
                .where(JobRow.account_id == account_id)
                .order_by(JobRow.created_at.desc(), JobRow.id)
                .limit(limit)
            ).all()
        return [JobRecord.from_row(row) for row in rows]

    def cancel(self, job_id: str) -> bool:
        """Mark a queued or running job cancelled (its runner, on whichever node, stops at its
        next progress report); False when it had already finished."""
        cancelled = self._update(
            job_id, JobRow.state.in_(ACTIVE), state=CANCELLED, finished_at=time.time()
        )
        self.changed.set()
        return cancelled

    # -- running ------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """Say that this node is alive (its jobs are not to be taken over)."""
        with self.engine.begin() as conn:
            insert_ignore(conn, JobNode, {"id": self.node, "seen_at": time.time()})
            conn.execute(update(JobNode).where(JobNode.id == self.node).values(seen_at=time.time()))

    def _claimable(self, runner: str) -> list[ColumnElement[bool]]:
        """A job that needs work (to run, or to clean up after), that no live server instance
        works on, and whose media is here (or nowhere yet, or on a node gone for good)."""
        live = select(ServerLease.id).where(ServerLease.expires_at > utcnow())
        gone = select(JobNode.id).where(JobNode.seen_at < time.time() - self.node_timeout_s)
        with self._held_lock:
            held = sorted(self._held)
        dead = self._dead_runners()
        return [
            JobRow.cleaned.is_(False),
            or_(
                JobRow.runner.is_(None),
                JobRow.runner.not_in(live),
                JobRow.runner.in_(dead),
                JobRow.runner == runner,
            ),
            JobRow.id.not_in(held),
            or_(JobRow.node.is_(None), JobRow.node == self.node, JobRow.node.in_(gone)),
        ]

    def claim(self, runner: str) -> JobClaim | None:
        """A claim on the oldest job that needs work and that nobody works on, made for the
        server instance `runner`; None when there is none."""
        self._hold_runner_lock(runner)
        where = self._claimable(runner)
        with self.engine.begin() as conn:
            job_id = conn.scalar(
                select(JobRow.id)
                .where(*where)
                .order_by(JobRow.created_at, JobRow.id)
                .limit(1)
                .with_for_update(skip_locked=True, of=JobRow)
            )
            if job_id is None:
                return None
            taken = conn.execute(
                update(JobRow).where(JobRow.id == job_id, *where).values(runner=runner)
            ).rowcount
            if taken != 1:
                return None
        with self._held_lock:
            self._held.add(job_id)
        return JobClaim(self, job_id, runner)

    def _runner_lock(self, runner: str) -> Path:
        return self.root / f"{RUNNER_LOCK[0]}{runner}{RUNNER_LOCK[1]}"

    def _hold_runner_lock(self, runner: str) -> None:
        """Hold `runner`'s lock file (flock) from its first claim until this process ends; it
        is made locked (a new name, then a rename), so nobody sees it unheld meanwhile."""
        path = self._runner_lock(runner)
        with _runner_locks_lock:
            if path in _runner_locks:
                return
            made = self.root / f".{path.name}-{secrets.token_hex(8)}"
            fd = os.open(made, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(made, path)
            _runner_locks[path] = fd

    def _dead_runners(self) -> list[str]:
        """The runners of this node whose process has died (nothing holds their lock file).
        A file that no job names any more is removed."""
        dead = []
        for path in self.root.glob(f"{RUNNER_LOCK[0]}*{RUNNER_LOCK[1]}"):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # removed meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            finally:
                os.close(fd)
            dead.append(path.name.removeprefix(RUNNER_LOCK[0]).removesuffix(RUNNER_LOCK[1]))
        if dead:
            with read_only(self.engine) as conn:
                named = set(conn.scalars(select(JobRow.runner).where(JobRow.runner.in_(dead))))
            for runner in set(dead) - named:
                self._runner_lock(runner).unlink(missing_ok=True)
        return dead

    def release(self, claim: JobClaim) -> None:
        """Give the job up (a finished one, or one left for the next server to run)."""
        with self._held_lock:
            self._held.discard(claim.job_id)
        self._update(claim.job_id, JobRow.runner == claim.runner, runner=None)

    def start(self, claim: JobClaim) -> bool:
        """Queued (or abandoned while running) → running; False when it was cancelled. A `url`
        job's media will be downloaded here: this node becomes its node."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(JobRow)
                .where(
                    JobRow.id == claim.job_id,
                    JobRow.runner == claim.runner,
                    JobRow.state.in_(ACTIVE),
                )
                .values(
                    state=RUNNING,
                    started_at=time.time(),
                    chunks_done=0,
                    attempts=JobRow.attempts + 1,
                    node=case((JobRow.media_name.is_(None), self.node), else_=JobRow.node),
                )
            ).rowcount
        return bool(done == 1)

    def set_reservation(self, claim: JobClaim, reservation_id: int | None, reserved: int) -> None:
        self._update(
            claim.job_id,
            JobRow.runner == claim.runner,
            reservation_id=reservation_id,
            reserved=reserved,
        )

    def progress(self, claim: JobClaim, chunks_done: int, chunks_total: int) -> bool:
        """Record progress; False when the job is no longer running for this claim (it was
        cancelled, from any node, or another server took it over)."""
        return self._update(
            claim.job_id,
            JobRow.state == RUNNING,
            JobRow.runner == claim.runner,
            chunks_done=chunks_done,
            chunks_total=chunks_total,
        )

    def finish(
        self,
        claim: JobClaim,
        state: str,
        *,
        response: str,
        media_type: str,
        billed: int = 0,
        chunks: int = 0,
        error: tuple[int, str] | None = None,
    ) -> bool:
        """Queued or running → `state` (done or failed) with the response; False when it was
        cancelled (or the claim lost)."""
        assert state in (DONE, FAILED)
        code, message = error if error is not None else (None, None)
        return self._update(
            claim.job_id,
            JobRow.state.in_(ACTIVE),
            JobRow.runner == claim.runner,
            state=state,
            response=response,
            media_type=media_type,
            billed=billed,
            chunks=chunks,
            error_code=code,
            error_message=message,
            finished_at=time.time(),
        )

    def remove_media(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def mark_cleaned(self, claim: JobClaim) -> None:
        self._update(claim.job_id, JobRow.runner == claim.runner, cleaned=True)

    # -- housekeeping -------------------------------------------------------------------
    def prune(self, older_than_s: float) -> int:
        """Forget finished, cleaned-up jobs that finished more than `older_than_s` ago."""
        cutoff = time.time() - older_than_s
        with self.engine.begin() as conn:
            pruned = conn.execute(
                delete(JobRow).where(JobRow.cleaned.is_(True), JobRow.finished_at < cutoff)
            ).rowcount
        return int(pruned)

    def remove_orphan_dirs(self) -> int:
        """Remove job directories of this node that have no job (a submission that died
        half-way, or a job pruned while this node was away)."""
        with read_only(self.engine) as conn:
            known = set(conn.scalars(select(JobRow.id).where(JobRow.node == self.node)))
        removed = 0
        for path in self.root.iterdir():
            if path.name in known or not path.is_dir():
                continue
            if time.time() - path.stat().st_mtime > ORPHAN_DIR_AGE_S:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    # -- the upgrade from jobs.sqlite ----------------------------------------------------
    def _import_old_store(self) -> None:
        """Move the jobs of `DATA/jobs/jobs.sqlite` (written before jobs were in the database)
        into the database, once: their media is on this node."""
        old = self.root / OLD_STORE
        if not old.exists():
            return
        with (self.root / "import.lock").open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # servers starting together import once
            if not old.exists():
                return
            with contextlib.closing(sqlite3.connect(old)) as db:
                db.row_factory = sqlite3.Row
                rows = [dict(row) for row in db.execute("SELECT * FROM jobs")]
            with self.engine.begin() as conn:
                for row in rows:
                    values = {k: row[k] for k in _COLUMNS if k in row}
                    values.update(cleaned=bool(row["cleaned"]), node=self.node, runner=None)
                    insert_ignore(conn, JobRow, values)
            old.rename(old.with_name(OLD_STORE + ".imported"))
            for suffix in ("-wal", "-shm"):
                old.with_name(OLD_STORE + suffix).unlink(missing_ok=True)
            shutil.rmtree(self.root / "locks", ignore_errors=True)  # the old stores' flocks
        log.info("imported %d jobs from %s into the database", len(rows), old)


def _columns() -> list[Any]:
    return [getattr(JobRow, name) for name in _COLUMNS]


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def job_json(record: JobRecord, *, with_response: bool = False) -> dict[str, Any]:
    """A job as the API shows it; with `with_response`, a finished job's response too."""
    total = record.chunks_total
    if total:
        fraction = round(record.chunks_done / total, 4)
    else:
        fraction = 1.0 if record.state == DONE else 0.0
    out: dict[str, Any] = {
        "job_id": record.id,
        "state": record.state,
        "progress": {
            "chunks_done": record.chunks_done,
            "chunks_total": total,
            "fraction": fraction,
        },
        "response_type": (record.fields.get("response_type") or "").strip().lower() or "json",
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "attempts": record.attempts,
        "billed": record.billed,
    }
    if record.state == FAILED:
        out["error"] = {"error_code": record.error_code, "error_message": record.error_message}
    if with_response and record.state == DONE and record.response is not None:
        is_json = (record.media_type or "").startswith("application/json")
        out["response"] = json.loads(record.response) if is_json else record.response
    return out
