"""Pool worker processes that end when the process that made their pool dies.

A `ProcessPoolExecutor` worker waits on its call queue until told to stop. When the process
that made the pool is killed (SIGKILL, OOM: no shutdown runs), nobody tells it, and it stays,
with its memory, adopted by init. `init_worker`, the initializer of the scan and ingest pools,
has the kernel SIGKILL the worker when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`).

The scan pool's workers are children of multiprocessing's forkserver, which exits by itself
when the main process dies (it watches a pipe only the main process holds open); then the
kernel kills them. The ingest pool's (spawn) workers are children of the main process. Either
way a worker made while its pool's owner was dying would miss the signal: it checks, once the
signal is armed, that the owner is still there (the pipe multiprocessing gives each worker
reaches end-of-file when the owner has gone), and exits otherwise.

The worker processes of `songscan serve --workers N` (children of Uvicorn's supervisor) get
SIGTERM the same way (the app's lifespan asks for it): they finish their requests and stop.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import signal
import sys

from .allocator import tune_allocator

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def init_worker() -> None:
    """The initializer of the scan and ingest pools' workers."""
    tune_allocator()
    end_with_parent()


def end_with_parent(death_signal: int = signal.SIGKILL) -> bool:
    """Have the kernel send `death_signal` to this process when its parent dies; exit now if
    the process that started this one (multiprocessing's parent) has already gone. False
    where the kernel offers no such signal (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0:
        return False
    owner = multiprocessing.parent_process()
    if owner is not None and _closed(owner.sentinel):
        os._exit(1)  # the owner died before the signal was armed
    return True


def _closed(sentinel: int) -> bool:
    """Whether the owner's end of the pipe is closed (it sends nothing once the worker runs,
    so readable means end-of-file)."""
    readable, _, _ = select.select([sentinel], [], [], 0)
    return bool(readable)
