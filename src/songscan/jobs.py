"""Long enterprise jobs: their durable state, their media, and which process runs each.

An enterprise request sent with `async=true` becomes a job (api-contract.md §5): a row of
`DATA/jobs/jobs.sqlite` and a directory `DATA/jobs/<id>/` holding its media. The row is the
record of the job: its parameters, state (queued → running → done | failed | cancelled),
progress, the ledger reservation that pays for it and, once finished, the response. So a job
outlives the process that runs it.

A process works on a job only while it holds an exclusive `flock` on the job's lock file. The
kernel drops the lock when the process dies, however it dies, so a `running` job whose lock is
free was abandoned: the next runner to claim it runs it again from the start (a scan's result
does not depend on how it was split, so a rerun gives the same result).

A finished job has follow-ups (settle its reservation, delete its media) after which its row is
marked `cleaned`. They are idempotent: a crash in between repeats them, never doubles them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import NotFound

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)

# A directory without a row is a submission that died half-way; removed when this old.
ORPHAN_DIR_AGE_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id             TEXT    PRIMARY KEY,
    account_id     INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    fields         TEXT    NOT NULL,  -- the request's parameters (JSON), the token masked
    http_method    TEXT    NOT NULL,
    media_name     TEXT,              -- the uploaded file in the job's directory; NULL: url
    chunks_total   INTEGER,           -- NULL until known (a url job: after the download)
    chunks_done    INTEGER NOT NULL DEFAULT 0,
    reservation_id INTEGER,           -- the ledger entry holding what the job may cost
    reserved       INTEGER NOT NULL DEFAULT 0,
    billed         INTEGER NOT NULL DEFAULT 0,
    chunks         INTEGER NOT NULL DEFAULT 0,  -- chunks recognised (billable)
    response       TEXT,              -- the finished job's body, as the synchronous call's
    media_type     TEXT,
    error_code     INTEGER,
    error_message  TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_at     REAL    NOT NULL,
    started_at     REAL,
    finished_at    REAL,
    cleaned        INTEGER NOT NULL DEFAULT 0  -- reservation settled and media deleted
);
CREATE INDEX IF NOT EXISTS jobs_account ON jobs (account_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_uncleaned ON jobs (cleaned, created_at);
"""


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        values = dict(row)
        values["fields"] = json.loads(values["fields"])
        values["cleaned"] = bool(values["cleaned"])
        return cls(**values)


class JobLock:
    """The exclusive right to work on one job, held until `release` (or the process's end)."""

    def __init__(self, job_id: str, fd: int) -> None:
        self.job_id = job_id
        self._fd = fd

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor drops the flock

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class JobStore:
    """The jobs of one data directory (shared by every server process on it)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.root = Path(data_dir) / "jobs"
        self._locks = self.root / "locks"
        self._locks.mkdir(parents=True, exist_ok=True)
        self._db_path = self.root / "jobs.sqlite"
        with contextlib.closing(self._connect()) as db:
            db.executescript(_SCHEMA)
        # Set when this process adds or cancels a job: its runners need not wait for a poll.
        self.changed = threading.Event()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._db_path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.row_factory = sqlite3.Row
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (the write lock taken up front), committed unless it raises."""
        with contextlib.closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _update(self, job_id: str, where: str, **values: Any) -> bool:
        """Set `values` on the job when `where` holds; whether it did."""
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        with self._tx() as db:
            sql = f"UPDATE jobs SET {assignments} WHERE id = :id AND {where}"  # our own names
            cursor = db.execute(sql, {**values, "id": job_id})
            return cursor.rowcount == 1

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
        """A new queued job; `media` (an uploaded file) is moved into the job's directory."""
        job_id = secrets.token_hex(16)
        job_dir = self.job_dir(job_id)
        job_dir.mkdir()
        media_name = None
        if media is not None:
            media_name = media.name
            shutil.move(media, job_dir / media_name)
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, account_id, state, fields, http_method, media_name, "
                "chunks_total, reservation_id, reserved, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    account_id,
                    QUEUED,
                    json.dumps(dict(fields)),
                    http_method,
                    media_name,
                    chunks_total,
                    reservation_id,
                    reserved,
                    time.time(),
                ),
            )
        record = self.require(job_id)  # as submitted: a runner may start it at once
        self.changed.set()
        return record

    def get(self, job_id: str) -> JobRecord | None:
        with contextlib.closing(self._connect()) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row is not None else None

    def require(self, job_id: str, account_id: int | None = None) -> JobRecord:
        """The job, or NotFound; with `account_id`, only a job of that account."""
        record = self.get(job_id)
        if record is None or (account_id is not None and record.account_id != account_id):
            raise NotFound(f"no job {job_id[:64]!r} for this api_token")
        return record

    def of_account(self, account_id: int, limit: int) -> list[JobRecord]:
        """An account's jobs, newest first."""
        with contextlib.closing(self._connect()) as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE account_id = ? ORDER BY created_at DESC, id LIMIT ?",
                (account_id, limit),
            ).fetchall()
        return [JobRecord.from_row(row) for row in rows]

    def cancel(self, job_id: str) -> bool:
        """Mark a queued or running job cancelled (its runner stops at its next progress
        report); False when it had already finished."""
        cancelled = self._update(
            job_id, "state IN ('queued', 'running')", state=CANCELLED, finished_at=time.time()
        )
        self.changed.set()
        return cancelled

    # -- running ------------------------------------------------------------------------
    def claim(self) -> JobLock | None:
        """The lock of the oldest job that needs work (to run, or to clean up after) and that
        no process is working on; None when there is none."""
        with contextlib.closing(self._connect()) as db:
            ids = [
                row["id"]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE cleaned = 0 ORDER BY created_at, id"
                ).fetchall()
            ]
        for job_id in ids:
            fd = os.open(self._locks / job_id, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            record = self.get(job_id)  # it may have been finished while we looked
            if record is not None and not record.cleaned:
                return JobLock(job_id, fd)
            os.close(fd)
        return None

    def start(self, job_id: str) -> bool:
        """Queued (or abandoned while running) → running; False when it was cancelled."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, chunks_done = 0, "
                "attempts = attempts + 1 WHERE id = ? AND state IN ('queued', 'running')",
                (RUNNING, time.time(), job_id),
            )
            return cursor.rowcount == 1

    def set_reservation(self, job_id: str, reservation_id: int | None, reserved: int) -> None:
        self._update(job_id, "1", reservation_id=reservation_id, reserved=reserved)

    def progress(self, job_id: str, chunks_done: int, chunks_total: int) -> bool:
        """Record progress; False when the job is no longer running (it was cancelled)."""
        return self._update(
            job_id, "state = 'running'", chunks_done=chunks_done, chunks_total=chunks_total
        )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        response: str,
        media_type: str,
        billed: int = 0,
        chunks: int = 0,
        error: tuple[int, str] | None = None,
    ) -> bool:
        """Running → `state` (done or failed) with the response; False when it was cancelled."""
        assert state in (DONE, FAILED)
        code, message = error if error is not None else (None, None)
        return self._update(
            job_id,
            "state = 'running'",
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

    def mark_cleaned(self, job_id: str) -> None:
        self._update(job_id, "1", cleaned=1)

    # -- housekeeping -------------------------------------------------------------------
    def prune(self, older_than_s: float) -> int:
        """Forget finished, cleaned-up jobs that finished more than `older_than_s` ago."""
        cutoff = time.time() - older_than_s
        with self._tx() as db:
            ids = [
                row["id"]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE cleaned = 1 AND finished_at < ?", (cutoff,)
                ).fetchall()
            ]
            db.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in ids])
        for job_id in ids:
            (self._locks / job_id).unlink(missing_ok=True)
        return len(ids)

    def remove_orphan_dirs(self) -> int:
        """Remove job directories that have no job (a submission that died half-way)."""
        with contextlib.closing(self._connect()) as db:
            known = {row["id"] for row in db.execute("SELECT id FROM jobs").fetchall()}
        removed = 0
        for path in self.root.iterdir():
            if path.name in known or path == self._locks or not path.is_dir():
                continue
            if time.time() - path.stat().st_mtime > ORPHAN_DIR_AGE_S:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed


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
