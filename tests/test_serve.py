"""`songscan serve` starts a real Uvicorn server on the embedded defaults."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """`songscan serve` in its own session, answering on the returned port."""
    port = free_port()
    command = [sys.executable, "-m", "songscan.cli", "--data", str(data), "serve"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return proc, port
        except httpx.TransportError:
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)


def test_serve_answers_over_a_real_socket(tmp_path: Path) -> None:
    proc, port = start_server(tmp_path)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)
        assert response.status_code == 200
        assert "songscan" in response.text.lower()
        assert (tmp_path / "accounts.db").exists()  # embedded SQLite in the data directory
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_multi_worker_listener_is_labelled_tcp() -> None:
    """With several workers asyncio enables TCP_NODELAY only on a listener labelled TCP."""
    import socket

    from songscan.api.serve import _TcpConfig

    config = _TcpConfig("songscan.api.serve:app_factory", factory=True, port=0, workers=2)
    sock = config.bind_socket()
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_two_workers_serve_a_scan_and_leave_no_process_behind(tmp_path: Path) -> None:
    import os
    import signal
    import wave

    token = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "songscan.cli",
                "--data",
                str(tmp_path),
                "accounts",
                "create",
                "--email",
                "ops@example.org",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    audio = tmp_path / "long.wav"
    with wave.open(str(audio), "wb") as w:  # 5.5 minutes of silence: more than one work unit
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(2 * 8000 * 330))
    proc, port = start_server(tmp_path, "--workers", "2")
    try:
        with audio.open("rb") as fh:
            r = httpx.post(
                f"http://127.0.0.1:{port}/enterprise",
                data={"api_token": token},
                files={"file": ("long.wav", fh)},
                timeout=120,
            )
        assert r.json() == {
            "status": "success",
            "result": [],
            "execution_time": r.json()["execution_time"],
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while True:  # every process of the server's session has ended: workers, scan pool
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "server processes outlived SIGTERM"
        time.sleep(0.2)
