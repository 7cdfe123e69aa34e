"""glibc malloc settings for numpy-heavy work.

Matching makes many short-lived arrays of 0.1 to 30 MB. By default glibc serves allocations
above a threshold that starts at 128 KiB by fresh mmaps, and gives the heap's free top back to
the system, so a new large array pays a page fault per 4 KiB on first touch: with a 100k-track
index, a third of the matching time went to those faults. Serving arrays below 32 MiB from the
heap, and keeping up to 128 MiB free at its top for the next ones, removes most of them; the
resident size then stays at the working set's peak instead of shrinking between chunks.

`tune_allocator` is called by the processes that match: the CLI (and the server it runs), and
the scan and ingest worker pools. Elsewhere (musl, macOS) it does nothing.

`limit_arenas` is for a process of many threads: glibc gives each new thread an arena of its
own, up to 8 per core, and memory freed in one arena serves only the threads bound to it: with
a thread per stream the free memory is split over 16 arenas. Limiting them took the listening
processes' growth from 46 to 20 MB a minute at 200 streams; the rest was FFmpeg's seek index
(`streams.source.INDEX_MEMORY_BYTES`; BENCHMARKS.md, live streams).
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 128 << 20


def tune_allocator() -> bool:
    """Apply the settings to this process; False where there is no glibc `mallopt`."""
    return _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and _mallopt(
        M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES
    )


def limit_arenas(arenas: int) -> bool:
    """At most `arenas` malloc arenas in this process (the main one included), for the threads
    started from now on; False where there is no glibc `mallopt`. Call it before the threads
    start: glibc fixes its limit when a process first has more than 8 arenas."""
    return _mallopt(M_ARENA_MAX, max(1, arenas))


def _mallopt(param: int, value: int) -> bool:
    try:
        libc = _libc()
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(param, value))


def _libc() -> ctypes.CDLL:
    """glibc by its soname; else whatever C library `find_library` finds (which runs
    `ldconfig`: some 30 ms of a command's start-up, so not first)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        from ctypes.util import find_library  # imports subprocess and shutil: only if needed

        return ctypes.CDLL(find_library("c") or "libc.so.6")
