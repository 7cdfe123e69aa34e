"""A process that listens to streams keeps its malloc arenas few: each listener is a thread, and
glibc would give every new thread an arena of its own (up to 8 per core), whose free memory
only the threads bound to it reuse; at 200 streams that free memory grew by tens of MB a minute
(BENCHMARKS.md, live streams)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Makes the app and starts its lifespan (housekeeping, jobs, the stream supervisor) in a fresh
# process, then 16 threads that each allocate and hold a block; prints the arenas before and
# after them.
PROBE = """
import ctypes, sys, tempfile, threading
from pathlib import Path
from fastapi.testclient import TestClient
from songscan.api.app import create_app

libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]

def arenas():
    path = Path(tempfile.mkdtemp()) / "malloc.xml"
    out = libc.fopen(str(path).encode(), b"w")
    libc.malloc_info(0, out)
    libc.fclose(out)
    return path.read_text().count("<heap nr=")

data_dir = Path(sys.argv[1])
data_dir.mkdir()
app = create_app(data_dir, {"streams": {"listen": sys.argv[2] == "listen"}})
with TestClient(app):
    before = arenas()
    started, done = threading.Barrier(17), threading.Event()
    def hold():
        block = bytearray(1 << 16)  # the thread's first malloc: it picks the thread's arena
        started.wait()
        done.wait()
    threads = [threading.Thread(target=hold) for _ in range(16)]
    for thread in threads:
        thread.start()
    started.wait()
    print(before, arenas())
    done.set()
"""


def _arenas(data_dir: Path, mode: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(data_dir), mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    before, after = out.stdout.split()
    return int(before), int(after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_a_listening_process_gives_its_threads_no_more_arenas_than_cores(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    before, after = _arenas(tmp_path / "api-only", "api-only")
    assert after > before  # without the limit, new threads bring new arenas
    assert _arenas(tmp_path / "listen", "listen")[1] <= cores
