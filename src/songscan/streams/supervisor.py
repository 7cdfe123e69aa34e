"""Which streams this server process listens to: a lease per stream in the database.

Every server process runs one supervisor (started and stopped by the app's lifespan). Each
tick (a third of `[streams] lease_s`, or at once when the API changed a stream here) it renews
the leases of its listeners, stops those whose stream is gone, whose URL changed or whose lease
another process took, and takes the streams nobody holds (no lease, or an expired one) up to
`max_streams` and up to its fair share: the streams over the live server instances, so that the
worker processes of `songscan serve` (one per core) split the streams between them instead of
the first one to look taking them all into one process (one GIL). A process keeps what it holds
when another one starts later; streams move only when one stops or dies. A process that dies
stops renewing: another one takes its streams over once the lease has expired. The lease's
owner is the process's server lease id (`server_leases`), so the same row can later be taken by
a scan worker instead.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time

from songscan.accounts.service import Accounts
from songscan.allocator import limit_arenas
from songscan.streams.listener import Listener, ListenerContext
from songscan.streams.store import Stream, StreamStore

log = logging.getLogger("songscan.streams")

PRUNE_EVERY_S = 3600.0


class StreamSupervisor:
    def __init__(self, store: StreamStore, accounts: Accounts, ctx: ListenerContext) -> None:
        self.store = store
        self.accounts = accounts
        self.ctx = ctx
        self.listeners: dict[int, Listener] = {}
        self._own_id = f"streams-{secrets.token_hex(8)}"
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0

    @property
    def owner(self) -> str:
        """The server instance's lease id (set by the housekeeping), else one of its own."""
        return self.accounts.ledger.instance_id or self._own_id

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
    to 8 per core), and the free memory held across them grew by tens of MB a minute at 200
    streams (BENCHMARKS.md, live streams). The listeners recognise one per core at a time
    (`recognition_slots`): as many arenas. Called as the app is made, before any of its
    threads (housekeeping, jobs, listeners) has taken an arena."""
    limit_arenas(cores())


def recognition_slots() -> threading.Semaphore:
    """Recognitions at once across one process's listeners: one per core."""
    return threading.Semaphore(cores())
