"""Which streams this process listens to: a lease per stream in the database.

The listening processes are the server processes (started and stopped by the app's lifespan)
when songscan runs on its own, and the scan workers' stream processes when it is scaled out
(SONGSCAN_BROKER_URL set: `songscan.streams.worker`; the API nodes then only serve the
methods). Each runs one supervisor. Each tick (a third of `[streams] lease_s`, or at once when
the API changed a stream in this process) it renews its own row in `stream_listeners` and the
leases of its listeners, stops those whose stream is gone, whose URL changed or whose lease
another process took, and takes the streams nobody holds (no lease, or an expired one) up to
`max_streams` and up to its fair share: the streams over the live listening processes, so that
the worker processes of `songscan serve` (one per core), or the scan workers, split the streams
between them instead of the first one to look taking them all into one process (one GIL). A
process keeps what it holds when another one starts later; streams move only when one stops or
dies. A process that dies stops renewing: another one takes its streams over once the lease has
expired (within `lease_s` plus one tick), and the callbacks it had not delivered yet (the
outbox rows it owned: `CallbackSender.tick`). Only the lease's owner records a stream's events
(`StreamStore.add_event`), so a process that stalled past its lease and wakes up again cannot
report what the new owner reports.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from pathlib import Path

from songscan.accounts.service import Accounts
from songscan.allocator import limit_arenas
from songscan.config import EngineConfig
from songscan.sources import AllowList
from songscan.streams.callbacks import CallbackSender
from songscan.streams.listener import Listener, ListenerContext, Reporter
from songscan.streams.settings import StreamsSettings
from songscan.streams.source import StreamOptions
from songscan.streams.store import Stream, StreamStore

log = logging.getLogger("songscan.streams")

PRUNE_EVERY_S = 3600.0


class StreamSupervisor:
    def __init__(self, store: StreamStore, ctx: ListenerContext) -> None:
        self.store = store
        self.ctx = ctx
        self.owner = ctx.owner
        self.listeners: dict[int, Listener] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0

    def start(self) -> None:
        if not self.ctx.settings.listen:
            return
        self._thread = threading.Thread(target=self._loop, name="songscan-streams", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A stream was added, changed or deleted through this process: look now."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for listener in self.listeners.values():
            listener.stop()
        for listener in self.listeners.values():
            listener.join(timeout=30)
        self.listeners.clear()
        self.ctx.reporter.sender.stop()
        if self._thread is not None:
            try:
                self.store.release_leases(self.owner)  # others may take them at once
            except Exception:
                log.exception("releasing the stream leases failed; they expire")

    def _loop(self) -> None:
        interval = self.ctx.settings.lease_s / 3
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # the database may be away for a while: try again next time
                log.exception("the stream supervisor's tick failed; it carries on")
            self._wake.wait(interval)
            self._wake.clear()

    def tick(self) -> None:
        settings = self.ctx.settings
        self.store.heartbeat(self.owner, settings.lease_s)
        held = self.store.renew_leases(self.owner, list(self.listeners), settings.lease_s)
        for stream_id in list(self.listeners):
            listener = self.listeners[stream_id]
            current = self.store.get(stream_id) if stream_id in held else None
            if current is None or current.url != listener.stream.url or not listener.alive:
                listener.stop()
                del self.listeners[stream_id]
                if current is not None:  # its URL changed, or it crashed: listen again
                    self._listen(current)
        room = min(settings.max_streams, self.store.fair_share()) - len(self.listeners)
        for stream in self.store.take_leases(self.owner, settings.lease_s, room):
            self._listen(stream)
        self.ctx.reporter.sender.tick()
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            self.store.prune_events(settings.event_retention_s)

    def _listen(self, stream: Stream) -> None:
        owners = ("", str(stream.account_id))  # as recognition.catalog_owners: shared + own
        listener = Listener(stream, owners, self.ctx)
        self.listeners[stream.id] = listener
        listener.start()
        log.info("stream %d (radio_id %d): listening", stream.id, stream.radio_id)


def cores() -> int:
    return len(os.sched_getaffinity(0)) or 1


def limit_listener_arenas() -> None:
    """A listener thread per stream: without a limit glibc gives each an arena of its own (up
    to 8 per core), and the free memory split across them grew by tens of MB a minute at 200
    streams (BENCHMARKS.md, live streams). The listeners recognise one per core at a time
    (`recognition_slots`): as many arenas. Called before any thread of the listening process
    has taken an arena: as the app is made (housekeeping, jobs, listeners), or as a scan
    worker's stream process starts (`streams.worker`)."""
    limit_arenas(cores())


def supervisor(
    data_dir: Path,
    accounts: Accounts,
    engine: EngineConfig,
    settings: StreamsSettings,
    allow: AllowList,
) -> StreamSupervisor:
    """A process's supervisor over the accounts database, with what its listeners share:
    `engine` (the catalog and index they match against), `allow` (the `url=` rules, for the
    streams and the callbacks), a callback sender and a recognition slot per core."""
    store = StreamStore(accounts.engine)
    options = StreamOptions(allow, settings.read_timeout_s, engine.fingerprint.sample_rate_hz)
    owner = f"streams-{secrets.token_hex(8)}"
    reporter = Reporter(store, CallbackSender(store, owner, settings, allow), accounts)
    ctx = ListenerContext(data_dir, engine, settings, options, reporter, recognition_slots(), owner)
    return StreamSupervisor(store, ctx)


def recognition_slots() -> threading.Semaphore:
    """Recognitions at once across one process's listeners: one per core."""
    return threading.Semaphore(cores())
