"""Long jobs: the durable store (`songscan.jobs`), and a job that survives its server being
killed (`songscan serve` as a subprocess, SIGKILL, started again on the same data dir)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import select

from songscan.accounts.models import LedgerEntry
from songscan.accounts.service import PENDING, Accounts
from songscan.jobs import CANCELLED, DONE, QUEUED, RUNNING, JobStore
from tests.api.conftest import build_catalog, long_recording
from tests.api.music import wav_8k
from tests.test_serve import start_server


def _job(store: JobStore, tmp_path: Path, media: bool = True) -> str:
    upload = None
    if media:
        upload = tmp_path / f"upload-{time.monotonic_ns()}.wav"
        upload.write_bytes(b"RIFF....")
    record = store.create(
        7, {"api_token": "ab***yz"}, "POST", upload, chunks_total=3, reservation_id=None, reserved=0
    )
    return record.id


# -- the store --------------------------------------------------------------------------------
def test_a_job_is_created_with_its_media_moved_in(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "data")
    upload = tmp_path / "day.wav"
    upload.write_bytes(b"RIFF....")
    record = store.create(
        7, {"api_token": "ab***yz"}, "POST", upload, chunks_total=3, reservation_id=11, reserved=3
    )
    assert not upload.exists()
    assert (store.job_dir(record.id) / "day.wav").read_bytes() == b"RIFF...."
    assert (record.state, record.reservation_id, record.reserved) == (QUEUED, 11, 3)
    assert store.of_account(7, 10) == [record]
    assert store.of_account(8, 10) == []
    # durable: another store (another process) on the data dir sees it
    assert JobStore(tmp_path / "data").require(record.id, 7) == record


def test_cancel_stops_a_job_and_only_an_unfinished_one(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job_id = _job(store, tmp_path)
    assert store.start(job_id)
    assert store.progress(job_id, 1, 3)
    assert store.cancel(job_id)
    assert not store.progress(job_id, 2, 3)  # the runner learns it here
    assert not store.finish(job_id, DONE, response="{}", media_type="application/json")
    assert not store.cancel(job_id)
    assert not store.start(job_id)
    record = store.require(job_id)
    assert record.state == CANCELLED and record.chunks_done == 1 and record.response is None


def test_a_claimed_job_is_not_claimed_twice(tmp_path: Path) -> None:
    """The lock is a flock: exclusive between processes (and descriptors); the kernel drops it
    when its holder dies, which the restart test below relies on."""
    store, other = JobStore(tmp_path), JobStore(tmp_path)
    first, second = _job(store, tmp_path), _job(store, tmp_path)
    lock = store.claim()
    assert lock is not None and lock.job_id == first
    assert store.start(first)
    other_lock = other.claim()
    assert other_lock is not None and other_lock.job_id == second  # the free one
    assert other.claim() is None
    lock.release()
    again = other.claim()
    assert again is not None and again.job_id == first
    assert store.require(first).state == RUNNING  # abandoned while running: run again
    again.release()
    other_lock.release()


def test_finished_cleaned_jobs_are_pruned_and_orphan_dirs_removed(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    finished, queued = _job(store, tmp_path), _job(store, tmp_path)
    store.start(finished)
    store.finish(finished, DONE, response="{}", media_type="application/json", billed=3)
    assert store.prune(older_than_s=0) == 0  # not cleaned up yet: its reservation is unsettled
    store.remove_media(finished)
    store.mark_cleaned(finished)
    assert store.claim() is not None and store.claim() is None  # only `queued` needs work
    assert store.prune(older_than_s=3600) == 0
    assert store.prune(older_than_s=0) == 1
    assert store.get(finished) is None and store.get(queued) is not None

    old, young = store.root / "a", store.root / "b"
    for orphan in (old, young):
        orphan.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.remove_orphan_dirs() == 1
    assert not old.exists() and young.exists() and store.job_dir(queued).exists()


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
    audio = tmp_path / "day.wav"  # 48 minutes: 240 chunks, ten units of work
    audio.write_bytes(wav_8k(np.tile(long_recording(songs), 40)))

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
        assert total == 240
        assert accounts.remaining(account) == before - total  # reserved once, at submission
        with accounts.engine.connect() as conn:  # held by the job, not by the server process
            holder = conn.scalar(
                select(LedgerEntry.holder).where(LedgerEntry.id == on_ledger_pending(accounts))
            )
        assert holder == f"job:{job_id}"

        # a graceful stop (SIGTERM) leaves the job to the next server, as a kill does
        _wait(port, token, job_id, lambda j: 0 < j["progress"]["chunks_done"] < total)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)  # Uvicorn re-raises it when done
        on_disk = JobStore(data).require(job_id)
        assert on_disk.state == RUNNING and on_disk.attempts == 1

        server, port = start_server(data)
        servers.append(server)
        _wait(port, token, job_id, lambda j: j["attempts"] == 2 and j["progress"]["chunks_done"])
        server.send_signal(signal.SIGKILL)  # mid-scan: no shutdown handler runs
        server.wait(timeout=30)
        on_disk = JobStore(data).require(job_id)
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
    job = JobStore(data).create(
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
        while not JobStore(data).require(job.id).cleaned:  # settled, media deleted
            assert time.monotonic() < wait_s
            time.sleep(0.05)
        assert accounts.remaining(account) == before - done["billed"]
        assert accounts.ledger.sum_and_balance(account.id)[0] == before - done["billed"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        dead.close()
        accounts.close()
