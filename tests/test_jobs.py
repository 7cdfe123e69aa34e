"""Long jobs: the durable store (`songscan.jobs`), and a job that survives its server being
killed (`songscan serve` as a subprocess, SIGKILL, started again on the same data dir)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select, update

from songscan.accounts.ledger import Ledger
from songscan.accounts.models import JobNode, LedgerEntry, ServerLease
from songscan.accounts.service import PENDING, Accounts
from songscan.jobs import CANCELLED, DONE, QUEUED, RUNNING, JobClaim, JobStore
from tests.api.conftest import build_catalog, long_recording
from tests.api.music import wav_8k
from tests.servers import PostgresServer
from tests.test_serve import start_server


@pytest.fixture(params=["sqlite", "postgresql"])
def accounts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Accounts]:
    """The jobs' database: SQLite in a data dir (the default) or a PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'accounts.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
    service = Accounts(url, {})
    yield service
    service.close()


def _runner(accounts: Accounts) -> str:
    """A live server instance (its lease), to claim jobs for."""
    return Ledger(accounts.engine, accounts.config, accounts.plans).start_lease()


def _job(store: JobStore, tmp_path: Path, media: bool = True) -> str:
    upload = None
    if media:
        upload = tmp_path / f"upload-{time.monotonic_ns()}.wav"
        upload.write_bytes(b"RIFF....")
    record = store.create(
        7, {"api_token": "ab***yz"}, "POST", upload, chunks_total=3, reservation_id=None, reserved=0
    )
    return record.id


def _claim(store: JobStore, runner: str) -> JobClaim:
    claim = store.claim(runner)
    assert claim is not None
    return claim


# -- the store --------------------------------------------------------------------------------
def test_a_job_is_created_with_its_media_moved_in(tmp_path: Path, accounts: Accounts) -> None:
    store = JobStore(accounts.engine, tmp_path / "data")
    upload = tmp_path / "day.wav"
    upload.write_bytes(b"RIFF....")
    record = store.create(
        7, {"api_token": "ab***yz"}, "POST", upload, chunks_total=3, reservation_id=11, reserved=3
    )
    assert not upload.exists()
    assert (store.job_dir(record.id) / "day.wav").read_bytes() == b"RIFF...."
    assert (record.state, record.reservation_id, record.reserved) == (QUEUED, 11, 3)
    assert record.node == store.node  # its media is on this node
    assert store.of_account(7, 10) == [record]
    assert store.of_account(8, 10) == []
    # durable: another store (another process, or another node) on the database sees it
    assert JobStore(accounts.engine, tmp_path / "data").require(record.id, 7) == record
    assert JobStore(accounts.engine, tmp_path / "other").require(record.id, 7) == record


def test_cancel_from_another_node_stops_a_job_and_only_an_unfinished_one(
    tmp_path: Path, accounts: Accounts
) -> None:
    store, elsewhere = (
        JobStore(accounts.engine, tmp_path / "a"),
        JobStore(accounts.engine, tmp_path / "b"),
    )
    assert store.node != elsewhere.node
    job_id = _job(store, tmp_path)
    claim = _claim(store, _runner(accounts))
    assert store.start(claim)
    assert store.progress(claim, 1, 3)
    assert elsewhere.cancel(job_id)
    assert not store.progress(claim, 2, 3)  # the runner learns it here
    assert not store.finish(claim, DONE, response="{}", media_type="application/json")
    assert not elsewhere.cancel(job_id)
    assert not store.start(claim)
    record = store.require(job_id)
    assert record.state == CANCELLED and record.chunks_done == 1 and record.response is None


def test_a_claimed_job_is_not_claimed_twice(tmp_path: Path, accounts: Accounts) -> None:
    """A claim names a live server instance; another instance (same node or not) cannot take
    the job until that instance's lease has expired (it was killed), and then the first can
    no longer change the job."""
    store, other = JobStore(accounts.engine, tmp_path), JobStore(accounts.engine, tmp_path)
    first, second = _job(store, tmp_path), _job(store, tmp_path)
    a, b = _runner(accounts), _runner(accounts)
    claim = _claim(store, a)
    assert claim.job_id == first
    assert store.start(claim)
    other_claim = _claim(other, b)
    assert other_claim.job_id == second  # the free one
    assert other.claim(b) is None
    other_claim.release()
    assert _claim(other, b).job_id == second  # released: free again
    with accounts.engine.begin() as conn:  # a's server was killed: its lease runs out
        conn.execute(
            update(ServerLease)
            .where(ServerLease.id == a)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    again = _claim(other, b)
    assert again.job_id == first
    assert store.require(first).state == RUNNING  # abandoned while running: run again
    assert other.start(again) and store.require(first).attempts == 2
    assert not store.progress(claim, 2, 3)  # the old claim is fenced off
    assert not store.finish(claim, DONE, response="{}", media_type="application/json")
    assert other.progress(again, 2, 3)


def test_claims_are_exclusive_under_concurrency(tmp_path: Path, accounts: Accounts) -> None:
    """Eight runners of two nodes claim at once: each job is claimed by exactly one."""
    stores = [JobStore(accounts.engine, tmp_path / name) for name in ("a", "a", "b", "b")]
    jobs = {_job(stores[0], tmp_path, media=False) for _ in range(40)}  # any node may run these
    runners = [_runner(accounts) for _ in range(8)]
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(store: JobStore, runner: str) -> None:
        while (claim := store.claim(runner)) is not None:
            with lock:
                claimed.append(claim.job_id)

    threads = [
        threading.Thread(target=claim_all, args=(stores[i % 4], runner))
        for i, runner in enumerate(runners)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(jobs)


def test_a_job_runs_on_its_media_s_node_until_that_node_is_gone(
    tmp_path: Path, accounts: Accounts
) -> None:
    here, there = (
        JobStore(accounts.engine, tmp_path / "a"),
        JobStore(accounts.engine, tmp_path / "b"),
    )
    upload = _job(here, tmp_path)
    runner = _runner(accounts)
    there.heartbeat()
    assert there.claim(runner) is None  # its media is on node a
    url_job = _job(there, tmp_path, media=False)
    claim = _claim(here, runner)
    assert claim.job_id == upload  # the older
    claim.release()
    here.heartbeat()
    there = JobStore(accounts.engine, tmp_path / "b", node_timeout_s=60)
    claim = _claim(there, runner)
    assert claim.job_id == url_job and there.start(claim)
    assert there.require(url_job).node == there.node  # downloaded there
    with accounts.engine.begin() as conn:  # node a is silent for longer than the timeout
        conn.execute(
            update(JobNode).where(JobNode.id == here.node).values(seen_at=time.time() - 61)
        )
    assert _claim(there, runner).job_id == upload  # to fail it: its media is gone


def test_finished_cleaned_jobs_are_pruned_and_orphan_dirs_removed(
    tmp_path: Path, accounts: Accounts
) -> None:
    store = JobStore(accounts.engine, tmp_path)
    runner = _runner(accounts)
    finished, queued = _job(store, tmp_path), _job(store, tmp_path)
    claim = _claim(store, runner)
    store.start(claim)
    store.finish(claim, DONE, response="{}", media_type="application/json", billed=3)
    assert store.prune(older_than_s=0) == 0  # not cleaned up yet: its reservation is unsettled
    store.remove_media(finished)
    store.mark_cleaned(claim)
    claim.release()
    assert _claim(store, runner).job_id == queued  # only `queued` needs work
    assert store.claim(runner) is None
    assert store.prune(older_than_s=3600) == 0
    assert store.prune(older_than_s=0) == 1
    assert store.get(finished) is None and store.get(queued) is not None

    old, young = store.root / "a", store.root / "b"
    for orphan in (old, young):
        orphan.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.remove_orphan_dirs() == 1
    assert not old.exists() and young.exists() and store.job_dir(queued).exists()


# The schema of DATA/jobs/jobs.sqlite as songscan wrote it before jobs moved into the database.
_OLD_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, account_id INTEGER NOT NULL, state TEXT NOT NULL, fields TEXT NOT NULL,
    http_method TEXT NOT NULL, media_name TEXT, chunks_total INTEGER,
    chunks_done INTEGER NOT NULL DEFAULT 0, reservation_id INTEGER,
    reserved INTEGER NOT NULL DEFAULT 0, billed INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0, response TEXT, media_type TEXT, error_code INTEGER,
    error_message TEXT, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    started_at REAL, finished_at REAL, cleaned INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_account ON jobs (account_id, created_at);
CREATE INDEX jobs_uncleaned ON jobs (cleaned, created_at);
"""


def test_the_jobs_of_an_older_data_dir_are_imported_once(
    tmp_path: Path, accounts: Accounts
) -> None:
    jobs_dir = tmp_path / "data" / "jobs"
    (jobs_dir / "locks").mkdir(parents=True)
    (jobs_dir / "pending").mkdir()
    (jobs_dir / "pending" / "day.wav").write_bytes(b"RIFF....")
    with contextlib.closing(sqlite3.connect(jobs_dir / "jobs.sqlite")) as db:
        db.executescript(_OLD_SCHEMA)
        db.execute(
            "INSERT INTO jobs (id, account_id, state, fields, http_method, media_name, "
            "chunks_total, chunks_done, reservation_id, reserved, attempts, created_at, "
            "started_at) VALUES ('pending', 7, 'running', '{\"api_token\": \"ab***yz\"}', "
            "'POST', 'day.wav', 240, 90, 12, 240, 1, 1000.0, 1001.0)"
        )
        db.execute(
            "INSERT INTO jobs (id, account_id, state, fields, http_method, chunks_total, "
            "chunks_done, billed, chunks, response, media_type, attempts, created_at, "
            "started_at, finished_at, cleaned) VALUES ('finished', 7, 'done', '{}', 'GET', 6, "
            "6, 6, 6, '{\"status\": \"success\"}', 'application/json', 1, 900.0, 901.0, "
            "950.0, 1)"
        )
        db.commit()
    store = JobStore(accounts.engine, tmp_path / "data")
    pending, finished = store.require("pending"), store.require("finished")
    assert (pending.state, pending.chunks_done, pending.reservation_id) == (RUNNING, 90, 12)
    assert pending.fields == {"api_token": "ab***yz"} and pending.node == store.node
    assert (finished.state, finished.response, finished.cleaned) == (
        DONE,
        '{"status": "success"}',
        True,
    )
    assert [r.id for r in store.of_account(7, 10)] == ["pending", "finished"]
    assert not (jobs_dir / "jobs.sqlite").exists() and (jobs_dir / "jobs.sqlite.imported").exists()
    assert not (jobs_dir / "locks").exists()
    assert JobStore(accounts.engine, tmp_path / "data").of_account(7, 10) == store.of_account(7, 10)
    claim = _claim(store, _runner(accounts))  # the interrupted job runs again, here
    assert claim.job_id == "pending" and store.start(claim)
    assert store.require("pending").attempts == 2


# -- a killed server ---------------------------------------------------------------------------
def on_ledger_pending(accounts: Accounts) -> int:
    """The id of the one pending reservation."""
    with accounts.engine.connect() as conn:
        (entry_id,) = conn.execute(
            select(LedgerEntry.id).where(LedgerEntry.status == PENDING)
        ).scalars()
    return int(entry_id)


def _poll(port: int, token: str, job_id: str) -> dict[str, Any]:
    r = httpx.get(
        f"http://127.0.0.1:{port}/enterprise/jobs/{job_id}", params={"api_token": token}, timeout=30
    )
    body = r.json()
    assert body["status"] == "success", body
    return body["result"]


def _wait(port: int, token: str, job_id: str, until: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while True:
        job = _poll(port, token, job_id)
        if until(job):
            return job
        assert job["state"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def test_a_job_survives_its_server_being_killed(tmp_path: Path) -> None:
    data, files = tmp_path / "data", tmp_path / "files"
    data.mkdir()
    files.mkdir()
    songs = build_catalog(data, files)
    # A dead server's reservations are released 2 s after its last renewal; a job's must not.
    (data / "songscan.toml").write_text("[accounts]\nserver_lease_s = 2\n")
    accounts = Accounts.open(data, {})
    token = accounts.identity.create_account(plan="enterprise").token
    account = accounts.authenticate(token, "127.0.0.1")
    before = accounts.remaining(account)
    audio = tmp_path / "day.wav"  # 192 minutes: 960 chunks, forty units of work
    audio.write_bytes(wav_8k(np.tile(long_recording(songs), 160)))

    servers: list[subprocess.Popen[bytes]] = []
    try:
        server, port = start_server(data)
        servers.append(server)
        with audio.open("rb") as fh:
            r = httpx.post(
                f"http://127.0.0.1:{port}/enterprise",
                data={"api_token": token, "async": "true", "accurate_offsets": "true"},
                files={"file": ("day.wav", fh)},
                timeout=120,
            )
        job = r.json()["result"]
        job_id, total = job["job_id"], job["progress"]["chunks_total"]
        assert total == 960
        assert accounts.remaining(account) == before - total  # reserved once, at submission
        with accounts.engine.connect() as conn:  # held by the job, not by the server process
            holder = conn.scalar(
                select(LedgerEntry.holder).where(LedgerEntry.id == on_ledger_pending(accounts))
            )
        assert holder == f"job:{job_id}"

        # a graceful stop (SIGTERM) leaves the job to the next server, as a kill does; sent in
        # the first half, so that the stop (a scan stops at its next progress report, after the
        # supervisor relays the signal) comes while units of work are still to be run
        _wait(port, token, job_id, lambda j: 0 < j["progress"]["chunks_done"] <= total // 2)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)  # Uvicorn re-raises it when done
        on_disk = JobStore(accounts.engine, data).require(job_id)
        assert on_disk.state == RUNNING and on_disk.attempts == 1

        server, port = start_server(data)
        servers.append(server)
        _wait(port, token, job_id, lambda j: j["attempts"] == 2 and j["progress"]["chunks_done"])
        server.send_signal(signal.SIGKILL)  # mid-scan: no shutdown handler runs
        server.wait(timeout=30)
        on_disk = JobStore(accounts.engine, data).require(job_id)
        assert on_disk.state == RUNNING and 0 < on_disk.chunks_done < total
        assert (data / "jobs" / job_id / "day.wav").exists()

        server, port = start_server(data)
        servers.append(server)
        done = _wait(port, token, job_id, lambda j: j["state"] != RUNNING and j["attempts"] == 3)
        assert done["state"] == "done", done
        assert done["progress"] == {"chunks_done": total, "chunks_total": total, "fraction": 1.0}
        assert done["billed"] == total
        deadline = time.monotonic() + 30
        while (data / "jobs" / job_id).exists():  # its media is deleted once it is billed
            assert time.monotonic() < deadline, list((data / "jobs" / job_id).iterdir())
            time.sleep(0.05)
        assert accounts.remaining(account) == before - total  # billed once, not twice

        with audio.open("rb") as fh:
            sync = httpx.post(
                f"http://127.0.0.1:{port}/enterprise",
                data={"api_token": token, "accurate_offsets": "true"},
                files={"file": ("day.wav", fh)},
                timeout=300,
            ).json()
        assert sync["result"], "the comparison needs matches"
        del done["response"]["execution_time"], sync["execution_time"]
        assert done["response"] == sync
        assert accounts.remaining(account) == before - 2 * total
        assert accounts.ledger.sum_and_balance(account.id)[0] == before - 2 * total
    finally:
        for server in servers:  # each in its own session: the scan pools' processes too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        accounts.close()


def test_a_job_whose_reservation_was_released_reserves_again(tmp_path: Path) -> None:
    """The process that queued the job died before handing its reservation over to the job, so
    a sweep released it: the job, run later, reserves again and is billed once."""
    data, files = tmp_path / "data", tmp_path / "files"
    data.mkdir()
    files.mkdir()
    songs = build_catalog(data, files)
    accounts, dead = Accounts.open(data, {}), Accounts.open(data, {})
    token = accounts.identity.create_account(plan="enterprise").token
    account = accounts.authenticate(token, "127.0.0.1")
    before = accounts.remaining(account)
    upload = tmp_path / "upload.wav"
    upload.write_bytes(wav_8k(long_recording(songs)))  # six chunks
    dead.ledger.start_lease()
    reservation = dead.reserve(account, 6, "enterprise")
    job = JobStore(accounts.engine, data).create(
        account.id,
        {"api_token": "ab***yz"},
        "POST",
        upload,
        chunks_total=6,
        reservation_id=reservation.entry_id,
        reserved=6,
    )
    dead.ledger.end_lease()  # it is gone before `hand_over`
    assert accounts.ledger.release_abandoned() == 1 and accounts.remaining(account) == before
    server, port = start_server(data)
    try:
        done = _wait(port, token, job.id, lambda j: j["state"] == DONE)
        assert done["billed"] > 0
        wait_s = time.monotonic() + 60
        while not JobStore(accounts.engine, data).require(job.id).cleaned:  # settled, media deleted
            assert time.monotonic() < wait_s
            time.sleep(0.05)
        assert accounts.remaining(account) == before - done["billed"]
        assert accounts.ledger.sum_and_balance(account.id)[0] == before - done["billed"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        dead.close()
        accounts.close()
