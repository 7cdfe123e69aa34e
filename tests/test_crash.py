"""After a `kill -9`: nothing is left behind, and nothing of a live sibling is touched.

Real processes, real SIGKILLs: `songscan serve` mid-way through a synchronous enterprise scan
(its reservation is released by the next server, its request's temp folder removed, its scan
pool's processes end), `songscan scan --workers 2` and `songscan add --workers 2` (their
pools' processes end). A live sibling (this test process: a lease it renews, a reservation,
a temp folder it holds) keeps what is its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select, update

from songscan.accounts.models import LedgerEntry, ServerLease
from songscan.accounts.service import PENDING, RELEASED, Accounts
from songscan.api.app import create_app
from songscan.sources import MEDIA_DIR_PREFIX, temporary_media
from tests.api.music import music, wav_8k, write_wav
from tests.servers import UvicornThread
from tests.test_serve import start_server

LEASE_S = 2  # [accounts] server_lease_s of these tests' servers: a dead one is found soon
WAIT_S = 120.0  # generous: the machine is shared; only a hang should hit it

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


def wait_until(what: str, done: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state != "Z":
                out[int(entry)] = int(ppid)
    return out


def descendants(pid: int) -> set[int]:
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    return pids & set(_parents())


def long_audio(path: Path, minutes: int = 24) -> Path:
    """Synthetic music, tiled: a scan of it takes long enough to be killed mid-way."""
    path.write_bytes(wav_8k(np.tile(music(7, 60.0), minutes)))
    return path


def upload_in_background(
    base_url: str, token: str, audio: Path
) -> tuple[threading.Thread, list[httpx.Response]]:
    """A synchronous enterprise scan of `audio`, sent from a thread; its reply lands in the
    list (none when the server is killed under it)."""
    replies: list[httpx.Response] = []

    def scan() -> None:
        with contextlib.suppress(httpx.TransportError), audio.open("rb") as fh:
            replies.append(
                httpx.post(
                    f"{base_url}/enterprise",
                    data={"api_token": token},
                    files={"file": ("day.wav", fh)},
                    timeout=WAIT_S,
                )
            )

    client = threading.Thread(target=scan, daemon=True)
    client.start()
    return client, replies


def kill_mid_work(proc: subprocess.Popen[bytes], workers: int) -> set[int]:
    """SIGKILL `proc` (only it) once its pool is at work; the pool's processes."""
    pool: set[int] = set()

    def pool_started() -> bool:
        assert proc.poll() is None, "the process ended before its pool started"
        pool.update(descendants(proc.pid))
        return len(alive(pool)) >= workers

    wait_until("the pool is at work", pool_started)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return pool


def assert_all_end(pool: set[int]) -> None:
    # Each has ended, or is a zombie (reparented to an init that may not reap it).
    try:
        wait_until("every pool process has ended", lambda: not alive(pool), timeout_s=30)
    except AssertionError:
        left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in alive(pool)}
        raise AssertionError(f"still alive: {left}") from None


@contextlib.contextmanager
def renewing(accounts: Accounts) -> Iterator[None]:
    """A live sibling server instance: its lease is renewed while the block runs."""
    accounts.ledger.start_lease()
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_S / 4):
            accounts.ledger.renew_lease()

    thread = threading.Thread(target=renew, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        accounts.ledger.end_lease()


def test_a_killed_server_leaves_nothing_and_spares_a_live_sibling(tmp_path: Path) -> None:
    data, media_tmp = tmp_path / "data", tmp_path / "media-tmp"
    data.mkdir()
    media_tmp.mkdir()
    (data / "songscan.toml").write_text(
        f'[accounts]\nserver_lease_s = {LEASE_S}\n[api]\ntmp_dir = "{media_tmp}"\n'
    )
    config = {"accounts": {"server_lease_s": LEASE_S}}
    accounts = Accounts.open(data, config)
    token = accounts.identity.create_account(plan="enterprise").token
    account = accounts.authenticate(token, "127.0.0.1")
    audio = long_audio(tmp_path / "day.wav")
    sibling = Accounts.open(data, config)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        with renewing(sibling), temporary_media(media_tmp) as sibling_media:
            (sibling_media / "upload.wav").write_bytes(b"RIFF....")
            before = accounts.remaining(account)
            kept = sibling.reserve(account, 5, "enterprise")
            server, port = start_server(data, "--workers", "1")
            servers.append(server)

            client, _ = upload_in_background(f"http://127.0.0.1:{port}", token, audio)
            wait_until("the scan's reservation is made", lambda: len(_pending(accounts)) == 2)
            (held,) = [row for row in _pending(accounts) if row.id != kept.entry_id]
            (request_media,) = [p for p in media_tmp.iterdir() if p != sibling_media]
            assert request_media.name.startswith(MEDIA_DIR_PREFIX)
            assert accounts.remaining(account) == before - 5 - held.reserved

            pool = kill_mid_work(server, workers=3)  # the forkserver and two workers
            client.join(timeout=60)
            assert_all_end(pool)
            assert request_media.exists() and accounts.is_pending(held.id)  # until a restart

            server, port = start_server(data, "--workers", "1")
            servers.append(server)
            wait_until("the reservation is released", lambda: not accounts.is_pending(held.id))
            wait_until("the temp folder is removed", lambda: not request_media.exists())
            with accounts.engine.connect() as conn:
                row = conn.execute(select(LedgerEntry).where(LedgerEntry.id == held.id)).one()
            assert (row.status, row.delta) == (RELEASED, 0)  # it says why, and costs nothing
            assert accounts.remaining(account) == before - 5
            # the live sibling's reservation and temp folder are untouched
            assert sibling.is_pending(kept.entry_id)
            assert (sibling_media / "upload.wav").read_bytes() == b"RIFF...."
            sibling.settle(kept, 5, "ok", 5)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        assert accounts.remaining(account) == before - 5
        assert accounts.ledger.sum_and_balance(account.id)[0] == before - 5
        assert list(media_tmp.iterdir()) == []
    finally:
        for proc in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        sibling.close()
        accounts.close()


def _pending(accounts: Accounts) -> list[Any]:
    """The pending reservations: (id, reserved) rows."""
    with accounts.engine.connect() as conn:
        query = select(LedgerEntry.id, LedgerEntry.reserved).where(LedgerEntry.status == PENDING)
        return list(conn.execute(query).all())


def _cli(data: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "songscan.cli", "--data", str(data), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_a_killed_scan_leaves_no_pool_process(tmp_path: Path) -> None:
    audio = long_audio(tmp_path / "day.wav")
    proc = _cli(tmp_path / "data", "scan", "--workers", "2", str(audio))
    try:
        assert_all_end(kill_mid_work(proc, workers=2))  # forked from the command itself
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_killed_add_leaves_no_pool_process(tmp_path: Path) -> None:
    tracks = tmp_path / "tracks"
    tracks.mkdir()
    for seed in range(6):
        write_wav(tracks / f"track{seed}.wav", np.tile(music(seed, 60.0), 4))
    proc = _cli(tmp_path / "data", "add", "--workers", "2", str(tracks))
    try:
        assert_all_end(kill_mid_work(proc, workers=2))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_workers_of_a_killed_multiprocess_server_stop(tmp_path: Path) -> None:
    """`serve --workers 2`: its supervisor killed, each worker gets SIGTERM and stops."""
    server, port = start_server(tmp_path, "--workers", "2")
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
        workers = descendants(server.pid)
        assert len(workers) >= 2
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        assert_all_end(workers)
        accounts = Accounts.open(tmp_path, {})
        with accounts.engine.connect() as conn:  # they stopped gracefully: leases ended
            assert conn.scalar(select(func.count()).select_from(ServerLease)) == 0
        accounts.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)


def test_a_request_whose_reservation_was_released_under_it_is_answered(tmp_path: Path) -> None:
    """Its server stalled past its lease (here: the lease is made to expire) and a sibling's
    sweep released the reservation: the scan is answered all the same, and not billed."""
    data = tmp_path / "data"
    data.mkdir()
    app = create_app(data, {})
    accounts: Accounts = app.state.accounts
    token = accounts.identity.create_account(plan="enterprise").token
    account = accounts.authenticate(token, "127.0.0.1")
    before = accounts.remaining(account)
    audio = long_audio(tmp_path / "day.wav", minutes=12)
    sibling = Accounts.open(data, {})
    try:
        with UvicornThread(app) as server:
            client, replies = upload_in_background(server.base_url, token, audio)
            wait_until("the scan's reservation is made", lambda: len(_pending(accounts)) == 1)
            with accounts.engine.begin() as conn:
                conn.execute(
                    update(ServerLease).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
            assert sibling.ledger.release_abandoned() == 1
            client.join(timeout=WAIT_S)
        (reply,) = replies
        assert reply.json()["status"] == "success", reply.json()
        assert accounts.remaining(account) == before
        assert [r.status for r in accounts.ledger.status(account.id).recent] == [RELEASED]
    finally:
        sibling.close()


def test_a_server_killed_under_standard_requests_owes_nothing_and_bills_every_answer(
    tmp_path: Path,
) -> None:
    """Standard recognitions are billed once recognised (one write, before the answer): a
    `kill -9` among a stream of them leaves no pending reservation, even before any restart,
    and every request that was answered is billed."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "songscan.toml").write_text("[plans.enterprise]\nrate_limit_per_s = 100000\n")
    accounts = Accounts.open(data, {"plans": {"enterprise": {"rate_limit_per_s": 100000}}})
    token = accounts.identity.create_account(plan="enterprise").token
    account = accounts.authenticate(token, "127.0.0.1")
    before = accounts.remaining(account)
    clip = wav_8k(music(3, 10.0))
    answered: list[int] = []
    stop = threading.Event()
    server, port = start_server(data, "--workers", "1")

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as http:
            while not stop.is_set():
                try:
                    reply = http.post("/", data={"api_token": token}, files={"file": clip})
                except httpx.TransportError:
                    return  # the server is gone
                assert reply.json()["status"] == "success", reply.text
                answered.append(1)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    try:
        for thread in clients:
            thread.start()
        wait_until("requests are answered", lambda: len(answered) >= 20)
        os.killpg(server.pid, signal.SIGKILL)  # the worker too: none stops gracefully
        server.wait(timeout=30)
        stop.set()
        for thread in clients:
            thread.join(timeout=WAIT_S)
        assert _pending(accounts) == []  # nothing to release, with no server running
        recent = accounts.ledger.status(account.id, recent=100_000).recent
        billed = [r for r in recent if r.method == "recognize" and r.status == "ok"]
        # every answer was billed first; at most the 4 in flight were billed unanswered
        assert len(answered) <= len(billed) <= len(answered) + len(clients)
        assert accounts.remaining(account) == before - len(billed)
        total, balance = accounts.ledger.sum_and_balance(account.id)
        assert total == balance
    finally:
        stop.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        accounts.close()
