"""`make run` serves through the real Makefile recipe, on the HOST and PORT it is given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
# -o install: the venv is installed already (no pip run inside a test)
MAKE_RUN = ["make", "-s", "-C", str(ROOT), "-o", "install", "run"]


def test_make_run_listens_on_host_and_port(tmp_path: Path) -> None:
    port = free_port()
    venv = Path(sys.executable).parent.parent  # this venv: its songscan is this checkout's
    proc = subprocess.Popen(
        [*MAKE_RUN, f"VENV={venv}", f"DATA={tmp_path}", "HOST=127.0.0.2", f"PORT={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.2:{port}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "make run did not start the server"
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
        with pytest.raises(httpx.ConnectError):  # the address given, not 127.0.0.1
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
