"""Streams on the scan workers (SONGSCAN_BROKER_URL set; docs/scale-out.md, "Streams").

`songscan worker` starts this process beside its Celery worker (`StreamProcess`), and stops it
when the Celery worker has stopped; should it end on its own (a crash in a decoder, the OOM
killer), it is started again after `RESTART_S`. The API nodes then serve the streams methods
but listen to nothing; the workers' stream processes share the streams through the same
leases as the server processes of a single machine (`supervisor`): one owner per stream, a
fair share per listening process, and a dead worker's streams taken over by another once
their leases ran out (`[streams] lease_s`, plus a tick). It matches against the shared
catalog and index of the worker's settings, and records events and sends callbacks as a
server process does.

A process of its own, not threads in Celery's main process: the prefork pool forks its run
processes from that one (at start, and whenever one is replaced), and a fork while listener
threads hold locks could leave a run process stuck on one (the main process keeps one thread
for this, waiting on the stream process's sentinel). A spawned process starts clean. It ends
with the worker even when the worker is killed (`workers.end_with_owner`), and on SIGTERM
or SIGINT it stops its listeners and gives its leases back, so that another worker takes its
streams at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from songscan.settings import Settings
from songscan.streams.settings import StreamsSettings

log = logging.getLogger("songscan.streams")

STOP_TIMEOUT_S = 60.0  # a stream process that has not stopped by then is killed
RESTART_S = 5.0  # a stream process that ended on its own is started again after this


class StreamProcess:
    """A worker's stream process: started, started again when it fails (ends with an error
    or is killed), stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: BaseProcess | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start it, unless `[streams] listen = false` (a bad `[streams]` fails here)."""
        if not StreamsSettings.from_config(self.settings.config).listen:
            return
        self.process = self._spawn()
        watch = threading.Thread(target=self._watch, name="songscan-streams-watch", daemon=True)
        watch.start()

    def stop(self) -> None:
        """Stop it (SIGTERM: it gives its leases back first)."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is None or not process.is_alive():
            return
        process.terminate()
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            log.warning("the stream process did not stop within %g s: killed", STOP_TIMEOUT_S)
            process.kill()
            process.join()

    def _spawn(self) -> BaseProcess:
        process = multiprocessing.get_context("spawn").Process(
            target=run, args=(self.settings,), name="songscan-streams"
        )
        process.start()
        return process

    def _watch(self) -> None:
        while True:
            assert self.process is not None
            wait([self.process.sentinel])
            # 0: it stopped as told (SIGTERM or SIGINT, as to the worker's whole process group)
            if self.process.exitcode == 0 or self._stopping.wait(RESTART_S):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                log.error(
                    "the stream process ended (exit code %s); it starts again",
                    self.process.exitcode,
                )
                self.process = self._spawn()


def run(settings: Settings) -> None:
    """The stream process: a supervisor until SIGTERM or SIGINT (or the worker's death)."""
    from songscan.accounts.service import Accounts
    from songscan.allocator import tune_allocator
    from songscan.api.recognition import ApiSettings
    from songscan.config import EngineConfig
    from songscan.streams.supervisor import limit_listener_arenas, supervisor
    from songscan.workers import end_with_owner

    tune_allocator()
    limit_listener_arenas()  # a listener thread per stream (as in `serve`)
    end_with_owner(graceful=True)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s: %(levelname)s/streams] %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per callback
    accounts = Accounts(settings.database_url, settings.config, data_dir=settings.data_dir)
    engine = EngineConfig.from_config(settings.config, settings.catalog_url, settings.index_url)
    largest = max(p.entitlements.max_file_bytes for p in accounts.plans.values())
    allow = ApiSettings.from_config(settings.config, largest).url_allow  # `[api] url_allow`
    streams = StreamsSettings.from_config(settings.config)
    listening = supervisor(settings.data_dir, accounts, engine, streams, allow)
    listening.start()
    log.info("listening to streams (owner %s)", listening.owner)
    stopping.wait()
    listening.stop()
    accounts.close()
    log.info("stopped listening to streams")
