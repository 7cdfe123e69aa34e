"""Worker processes that end when the process that started them dies.

A `ProcessPoolExecutor` worker waits on its call queue until told to stop. When the process
that made the pool is killed (SIGKILL, OOM: no shutdown runs), nobody tells it, and it stays,
with its memory, adopted by init. The kernel's parent-death signal does not help the scan pool:
its workers are children of multiprocessing's forkserver, and the forkserver only exits once
every holder of its "alive" pipe has gone, its own workers included (each inherits that pipe),
so it and its workers would wait on each other forever.

What does tell: multiprocessing hands each process it starts a sentinel, a pipe whose other end
only the starting process holds (forkserver and spawn alike), which reaches end-of-file when
that process dies. `end_with_owner` watches it from a daemon thread and ends the process then:
at once for a pool worker (`init_worker`, the initializer of the scan and ingest pools); with
SIGTERM, so that it finishes and stops gracefully, for a worker of `songscan serve --workers N`
(a child of Uvicorn's supervisor). Once the workers are gone the forkserver and multiprocessing's
resource tracker see end-of-file too, and exit.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import wait

from .allocator import tune_allocator


def init_worker() -> None:
    """The initializer of the scan and ingest pools' workers."""
    tune_allocator()
    end_with_owner()


def end_with_owner(graceful: bool = False) -> bool:
    """End this process when the process that started it dies: `os._exit` at once, or with
    `graceful` a SIGTERM to itself. False when this process was not started by multiprocessing
    (nothing to watch)."""
    owner = multiprocessing.parent_process()
    if owner is None or owner.sentinel is None:
        return False
    watch = threading.Thread(
        target=_end_when_closed,
        args=(owner.sentinel, graceful),
        name="songscan-owner-watch",
        daemon=True,
    )
    watch.start()
    return True


def _end_when_closed(sentinel: int, graceful: bool) -> None:
    wait([sentinel])  # the owner never writes to it: readable means it has gone
    if graceful:
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        os._exit(1)
