"""Several API nodes on one PostgreSQL, and PostgreSQL restarting under them: real
`songscan serve` processes (each with its own data dir: a node) and a real PostgreSQL, on
loopback.

- a job submitted on node A is listed, polled, fetched and cancelled on node B; it runs on A,
  which has its media, and stops once cancelled from B;
- a node killed mid-job, for good: another node fails its job (the media is gone with it) and
  refunds its reservation;
- PostgreSQL stopped and started while a server runs: requests in between get the contract's
  error (code 100, JSON), the server stays up, then everything works again without a restart,
  the interrupted job included (billed once);
- the quota race over two nodes: 200 concurrent requests against 50 left serve exactly 50.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from songscan.accounts.models import JobRow, ServerLease
from songscan.accounts.service import Account, Accounts
from tests.api.conftest import build_catalog, long_recording
from tests.api.music import excerpt, music, wav_8k
from tests.servers import PostgresServer, start_postgres
from tests.test_serve import start_server

pytestmark = pytest.mark.xdist_group("nodes")  # real servers: one such test at a time

WAIT_S = 300.0


def _node(root: Path, name: str, url: str, **sections: str) -> Path:
    """A node's data dir, its database the PostgreSQL at `url`."""
    data = root / name
    data.mkdir()
    config = {"backends": f'database_url = "{url}"', "accounts": "server_lease_s = 2", **sections}
    (data / "songscan.toml").write_text(
        "".join(f"[{section}]\n{body}\n" for section, body in config.items())
    )
    return data


@contextlib.contextmanager
def _servers(*nodes: Path, output: Path | None = None) -> Iterator[list[tuple[Any, str]]]:
    """`songscan serve --workers 1` on each node: (process, base URL) each."""
    started: list[tuple[Any, str]] = []
    try:
        for data in nodes:
            proc, port = start_server(data, "--workers", "1", output=output)
            started.append((proc, f"http://127.0.0.1:{port}"))
        yield started
    finally:
        for proc, _ in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _enterprise(base: str, token: str, audio: Path, **fields: str) -> dict[str, Any]:
    with audio.open("rb") as fh:
        reply = httpx.post(
            f"{base}/enterprise",
            data={"api_token": token, **fields},
            files={"file": (audio.name, fh)},
            timeout=120,
        )
    return dict(reply.json())


def _submit(base: str, token: str, audio: Path) -> dict[str, Any]:
    body = _enterprise(base, token, audio, **{"async": "true"})
    assert body["status"] == "success", body
    return dict(body["result"])


def _job(base: str, token: str, job_id: str) -> dict[str, Any]:
    body = httpx.get(
        f"{base}/enterprise/jobs/{job_id}", params={"api_token": token}, timeout=30
    ).json()
    assert body["status"] == "success", body
    return dict(body["result"])


def _wait(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def _wav(path: Path, samples: np.ndarray) -> Path:
    path.write_bytes(wav_8k(samples))
    return path


@dataclass
class Customer:
    """An enterprise account on the nodes' database, and its requests left at the start."""

    accounts: Accounts
    token: str
    account: Account
    before: int

    def remaining(self) -> int:
        return self.accounts.remaining(self.account)


def _catalog_and_customer(
    tmp_path: Path, data: Path, database: str
) -> tuple[dict[int, np.ndarray], Customer]:
    """The songs of `build_catalog`, added through the node `data`, and an enterprise customer
    (close its `accounts` at the end)."""
    files = tmp_path / "files"
    files.mkdir()
    songs = build_catalog(data, files, database)
    accounts = Accounts(database, {})
    token = accounts.identity.create_account(plan="enterprise").token
    account = accounts.authenticate(token, "127.0.0.1")
    return songs, Customer(accounts, token, account, accounts.remaining(account))


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


def test_a_job_submitted_on_one_node_is_polled_fetched_and_cancelled_on_another(
    tmp_path: Path, database: str
) -> None:
    node_a, node_b = _node(tmp_path, "a", database), _node(tmp_path, "b", database)
    songs, customer = _catalog_and_customer(tmp_path, node_a, database)
    accounts, token, before = customer.accounts, customer.token, customer.before
    short = _wav(tmp_path / "show.wav", long_recording(songs))  # six chunks
    day = _wav(tmp_path / "day.wav", np.tile(long_recording(songs), 40))  # 240 chunks
    try:
        with _servers(node_a, node_b) as [(_, a), (_, b)]:
            done_id = _submit(a, token, short)["job_id"]
            done = _wait("the job", lambda: (j := _job(b, token, done_id))["state"] == "done" and j)
            fetched = httpx.get(
                f"{b}/enterprise/jobs/{done_id}/result", params={"api_token": token}, timeout=30
            ).json()
            sync = _enterprise(a, token, short)
            assert sync["result"], "the comparison needs matches"
            del fetched["execution_time"], sync["execution_time"]
            assert fetched == sync  # run on A, fetched from B
            billed = done["billed"]
            assert billed == 6

            long_id = _submit(a, token, day)["job_id"]
            assert (node_a / "jobs" / long_id / "day.wav").exists()  # its media is on A
            _wait(
                "progress seen from B", lambda: _job(b, token, long_id)["progress"]["chunks_done"]
            )
            listed = httpx.get(
                f"{b}/enterprise/jobs", params={"api_token": token}, timeout=30
            ).json()["result"]
            assert [j["job_id"] for j in listed] == [long_id, done_id]
            cancelled = httpx.post(
                f"{b}/enterprise/jobs/{long_id}/cancel", data={"api_token": token}, timeout=30
            ).json()["result"]
            assert cancelled["state"] == "cancelled"
            assert cancelled["progress"]["chunks_done"] < 240
            # A's runner stops at its next unit, then refunds the job and deletes its media
            _wait("A's runner to stop", lambda: not (node_a / "jobs" / long_id).exists(), 60)
            assert _job(a, token, long_id)["state"] == "cancelled"
        assert customer.remaining() == before - billed - 6  # the job and the sync call
        total, balance = accounts.ledger.sum_and_balance(customer.account.id)
        assert total == balance == before - 12
    finally:
        accounts.close()


def test_a_dead_node_s_job_fails_on_another_node_and_is_refunded(
    tmp_path: Path, database: str
) -> None:
    timeout = {"api": "job_node_timeout_s = 4"}
    node_a, node_b = (
        _node(tmp_path, "a", database, **timeout),
        _node(tmp_path, "b", database, **timeout),
    )
    songs, customer = _catalog_and_customer(tmp_path, node_a, database)
    accounts, token, before = customer.accounts, customer.token, customer.before
    day = _wav(tmp_path / "day.wav", np.tile(long_recording(songs), 40))
    try:
        with _servers(node_a, node_b) as [(proc_a, a), (_, b)]:
            job_id = _submit(a, token, day)["job_id"]
            _wait("A to run the job", lambda: _job(b, token, job_id)["progress"]["chunks_done"])
            assert customer.remaining() == before - 240
            os.killpg(proc_a.pid, signal.SIGKILL)  # node A is gone, and stays gone
            proc_a.wait(timeout=30)
            failed = _wait(
                "B to fail the job",
                lambda: (j := _job(b, token, job_id))["state"] != "running" and j,
                60,
            )
            assert failed["state"] == "failed", failed
            assert failed["error"]["error_code"] == 100
            assert "did not come back" in failed["error"]["error_message"]
            _wait("the refund", lambda: customer.remaining() == before, 30)
        total, balance = accounts.ledger.sum_and_balance(customer.account.id)
        assert total == balance == before
    finally:
        accounts.close()


def test_a_node_s_next_server_takes_a_killed_server_s_job_back_before_its_lease_runs_out(
    tmp_path: Path, database: str
) -> None:
    """The killed server's lease runs for ten minutes more, but nothing holds its lock file in
    the node's data dir any more: the node's next server runs the job again at once, billed
    once."""
    data = _node(tmp_path, "data", database, accounts="server_lease_s = 600")
    songs, customer = _catalog_and_customer(tmp_path, data, database)
    accounts, token, before = customer.accounts, customer.token, customer.before
    day = _wav(tmp_path / "day.wav", np.tile(long_recording(songs), 40))
    try:
        with _servers(data) as [(proc, base)]:
            job_id = _submit(base, token, day)["job_id"]
            _wait("the job to run", lambda: _job(base, token, job_id)["progress"]["chunks_done"])
            os.killpg(proc.pid, signal.SIGKILL)  # mid-scan: its lease is left behind
            proc.wait(timeout=30)
        with accounts.engine.connect() as conn:
            killed = conn.scalar(select(JobRow.runner).where(JobRow.id == job_id))
            lease_ends = conn.scalar(select(ServerLease.expires_at).where(ServerLease.id == killed))
        assert killed and lease_ends is not None
        dead_lock = data / "jobs" / f"runner-{killed}.lock"
        assert dead_lock.exists()
        with _servers(data) as [(_, base)]:
            done = _wait(
                "the next server to complete the job",
                lambda: (j := _job(base, token, job_id))["state"] != "running" and j,
            )
            # the dead runner's file goes once no job names it (the live runner's stays)
            _wait("the dead runner's lock file to go", lambda: not dead_lock.exists(), 30)
            assert list((data / "jobs").glob("runner-*.lock")) != []
        assert datetime.now(UTC) < lease_ends  # taken back long before the lease ran out
        assert done["state"] == "done" and done["attempts"] == 2, done
        assert done["billed"] == 240
        _wait("the job's settlement", lambda: customer.remaining() == before - 240, 60)
    finally:
        accounts.close()


def test_postgresql_restarting_gives_clean_errors_then_recovers_without_a_restart(
    tmp_path: Path,
) -> None:
    pg = start_postgres(max_connections=100)
    database = pg.create_database()
    data = _node(tmp_path, "data", database)
    songs, customer = _catalog_and_customer(tmp_path, data, database)
    accounts, token, before = customer.accounts, customer.token, customer.before
    clip = _wav(tmp_path / "clip.wav", excerpt(songs[2], 10.0, 18.0))
    day = _wav(tmp_path / "day.wav", np.tile(long_recording(songs), 40))
    log_path = tmp_path / "server.log"

    def recognize(base: str) -> dict[str, Any]:
        with clip.open("rb") as fh:
            reply = httpx.post(
                f"{base}/", data={"api_token": token}, files={"file": ("clip.wav", fh)}, timeout=60
            )
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
        return dict(reply.json())

    def jobs(base: str, job_id: str = "") -> dict[str, Any]:
        path = f"/enterprise/jobs/{job_id}" if job_id else "/enterprise/jobs"
        reply = httpx.get(f"{base}{path}", params={"api_token": token}, timeout=60)
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
        return dict(reply.json())

    try:
        with _servers(data, output=log_path) as [(proc, base)]:
            assert recognize(base)["result"]["audio_id"] == 2  # accounts and the catalog
            job_id = _submit(base, token, day)["job_id"]
            _wait("the job to run", lambda: jobs(base, job_id)["result"]["progress"]["chunks_done"])

            pg.halt("fast")  # PostgreSQL goes away under the running server
            for reply in (recognize(base), jobs(base), jobs(base, job_id), recognize(base)):
                assert reply["status"] == "error", reply
                assert reply["error"]["error_code"] == 100
                assert "database is unavailable" in reply["error"]["error_message"]
                assert "Traceback" not in str(reply)
            health = httpx.get(f"{base}/healthz", timeout=60)
            assert health.status_code == 503, health.text
            assert health.json()["error"]["error_code"] == 100  # and no traceback in the log
            assert "database is unavailable" in health.json()["error"]["error_message"]
            time.sleep(2)  # the job runner and the housekeeping meet the outage too
            assert proc.poll() is None  # the server stays up

            pg.restart()
            assert recognize(base)["result"]["audio_id"] == 2  # at once: no songscan restart
            assert jobs(base)["status"] == "success"
            assert httpx.get(f"{base}/healthz", timeout=60).json()["status"] == "ok"
            done = _wait(
                "the interrupted job to complete",
                lambda: (j := jobs(base, job_id)["result"])["state"] != "running" and j,
            )
            assert done["state"] == "done" and done["attempts"] == 2, done
            assert done["billed"] == 240
            _wait("the job's settlement", lambda: customer.remaining() == before - 242, 60)
        total, balance = accounts.ledger.sum_and_balance(customer.account.id)
        assert total == balance == before - 242  # two recognitions and the job, billed once
        log = log_path.read_text()
        assert log.count("the accounts database is unavailable") == 1, log
        assert "the accounts database is back" in log
        assert "Traceback" not in log, log
    finally:
        accounts.close()
        pg.stop()


def test_the_quota_race_over_two_nodes_serves_exactly_what_is_left(
    tmp_path: Path, database: str
) -> None:
    """200 concurrent standard requests, half to each node, against an account with 50
    requests left: exactly 50 are served, the others get error 902, and the ledger balances."""
    sections = {"plans.trial": "rate_limit_per_s = 1000"}
    node_a, node_b = (
        _node(tmp_path, "a", database, **sections),
        _node(tmp_path, "b", database, **sections),
    )
    accounts = Accounts(database, {"accounts": {"free_requests": 50}})
    token = accounts.identity.create_account().token
    account = accounts.authenticate(token, "127.0.0.1")
    assert accounts.remaining(account) == 50
    clip = wav_8k(music(7, 4.0))

    async def race(bases: list[str]) -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=WAIT_S, limits=limits) as client:

            async def one(i: int) -> dict[str, Any]:
                reply = await client.post(
                    f"{bases[i % 2]}/",
                    data={"api_token": token},
                    files={"file": ("clip.wav", clip)},
                )
                return dict(reply.json())

            return await asyncio.gather(*(one(i) for i in range(200)))

    try:
        with _servers(node_a, node_b) as servers:
            replies = asyncio.run(race([base for _, base in servers]))
        served = [r for r in replies if r["status"] == "success"]
        refused = [r for r in replies if r.get("error", {}).get("error_code") == 902]
        assert (len(served), len(refused)) == (50, 150), [
            r for r in replies if r not in served + refused
        ][:3]
        assert accounts.remaining(account) == 0
        total, balance = accounts.ledger.sum_and_balance(account.id)
        assert total == balance == 0
    finally:
        accounts.close()
