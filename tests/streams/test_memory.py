"""What a listening process holds stays bounded (BENCHMARKS.md, live streams): its malloc arenas
are few (each listener is a thread, and glibc would give every new thread an arena of its own,
up to 8 per core, whose free memory only the threads bound to it reuse), and decoding an endless
stream holds no more memory the longer it runs (FFmpeg's seek index grew by 24 bytes a frame)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from songscan.config import DEFAULT
from songscan.streams.source import StreamEnded, decoding
from tests.api.music import music
from tests.streams.radio import encoded

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
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "malloc.xml"
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


MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
MALLINFO2_FIELDS += ("uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS]


def _malloc_in_use() -> int:
    """Bytes glibc malloc has handed out and not had back (mallinfo2's `uordblks`)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().uordblks)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_decoding_an_endless_stream_holds_no_more_memory_as_it_goes() -> None:
    """10 minutes of 128 kbit/s MP3 (~23,000 frames) through the listener's decoder: once it
    runs, what malloc holds does not grow with the frames (with FFmpeg's default index it grew
    by 24 bytes a frame: 445 KB here, 15 KB with the cap)."""
    minute = encoded(music(961, 60.0), bit_rate=128_000)
    step = 16_000 // 10  # as a live server sends it: a tenth of a second at a time
    slices = (minute[lo : lo + step] for _ in range(10) for lo in range(0, len(minute), step))
    in_use: list[int] = []
    with decoding(slices, DEFAULT.fingerprint.sample_rate_hz) as blocks:
        try:
            for n, _ in enumerate(blocks):
                if n % 2000 == 0:
                    in_use.append(_malloc_in_use())
        except StreamEnded:
            pass
    assert len(in_use) > 10
    assert in_use[-1] - in_use[2] < 100_000
