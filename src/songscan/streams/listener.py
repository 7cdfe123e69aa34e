"""One stream's listener: a thread that connects, decodes, recognises and reports.

It cuts the decoded audio into consecutive 12-second windows (`windows.WindowBuffer`, one
buffer per listener), recognises each (`plays.WindowRecognizer`), merges them into plays
(`plays.PlayTracker`) and reports each play once: when it has ended, or when it starts with
`callbacks=before`. When the stream drops it reconnects with a back-off that doubles
(`[streams] reconnect_min_s` to `reconnect_max_s`); a drop shorter than `gap_tolerance_s` keeps
the play in progress, a longer one ends it and is reported as notification 650 (once, until the
stream plays again: then a notification with `stream_running: true`). `silence_notify_s` of
silence is reported as 651, once. A listener whose first play continues the stream's last
reported one (`callbacks.same_play`: a stream taken over mid-song, reported at its start by the
listener before) does not report it again. Events and state are recorded only while this
process holds the stream's lease (`ctx.owner`).

Times: a sample's wall-clock time is estimated as the connection's anchor plus its position,
the anchor being the earliest `arrival time - position` seen (a live server sends no audio
before it is played; it may send a burst of the last seconds at connect).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from songscan.accounts.service import Accounts
from songscan.chunks import Chunk
from songscan.config import EngineConfig
from songscan.errors import SongscanError
from songscan.streams.callbacks import (
    CANT_CONNECT,
    NO_MUSIC,
    RUNNING_AGAIN,
    CallbackSender,
    notification_body,
    result_body,
    same_play,
)
from songscan.streams.plays import HEAD_S, PlayEvent, PlayTracker, Window, WindowRecognizer
from songscan.streams.settings import StreamsSettings
from songscan.streams.source import StreamOptions, open_stream
from songscan.streams.store import NOTIFICATION, RESULT, Stream, StreamStore
from songscan.streams.windows import WindowBuffer

log = logging.getLogger("songscan.streams")

# Two listeners' estimates of when the same audio was on air agree within this (each is
# within about a second; tested within 3 s).
CLOCKS_AGREE_S = 3.0


class Reporter:
    """Records a stream's event (for `/longpoll/`) with its callback (the outbox), and wakes
    the sender to deliver it."""

    def __init__(self, store: StreamStore, sender: CallbackSender, accounts: Accounts) -> None:
        self.store = store
        self.sender = sender
        self.accounts = accounts

    def report(self, stream: Stream, kind: str, body: dict[str, Any], owner: str) -> None:
        """`owner`: the listener's process; nothing is reported unless it holds the lease."""
        recorded = self.store.add_event(stream, kind, body, owner)
        if recorded is None:
            log.info("stream %d: an event not reported, the stream is no longer ours", stream.id)
            return
        if recorded.dropped:
            self.sender.failed += recorded.dropped
            log.warning(
                "account %d: callback queue full, the oldest %d callback(s) dropped",
                stream.account_id,
                recorded.dropped,
            )
        if recorded.callback_queued:
            self.sender.wake(stream.account_id)

    def enterprise_metadata(self, account_id: int) -> bool:
        """isrc/upc in results, as on `/enterprise`: by the account's entitlement."""
        return self.accounts.entitlements(self.accounts.account(account_id)).enterprise_metadata


@dataclass(frozen=True)
class ListenerContext:
    """What every listener of a server process shares."""

    data_dir: Path
    engine: EngineConfig
    settings: StreamsSettings
    options: StreamOptions
    reporter: Reporter
    limiter: threading.Semaphore  # recognitions at once in this process
    owner: str  # this process's id as the owner of stream leases (`stream_listeners`)


class Listener:
    def __init__(self, stream: Stream, owners: tuple[str, ...], ctx: ListenerContext) -> None:
        self.stream = stream
        self.ctx = ctx
        self.stop_event = threading.Event()
        self.epoch = time.time()  # the listener's timeline starts here (wall clock)
        self.recognizer = WindowRecognizer(ctx.data_dir, ctx.engine, owners, ctx.limiter)
        self.tracker = PlayTracker(
            ctx.engine.match.continuity_tolerance_s,
            ctx.settings.gap_tolerance_s,
            plays_on=self.recognizer.plays_on,
        )
        rate = ctx.engine.fingerprint.sample_rate_hz
        self._window_buffer = WindowBuffer(
            round(ctx.engine.scan.chunk_s * rate), round(HEAD_S * rate)
        )
        self._index = 0  # windows so far, across connections
        self._down_since: float | None = self.epoch  # not connected yet
        self._notified_down = False
        self._silent_s = 0.0
        self._notified_silence = False
        # The stream's last reported play, until this listener reports its first: a play
        # that continues it was reported by the stream's previous listener already.
        self._last_result: dict[str, Any] | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"songscan-stream-{stream.id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        settings = self.ctx.settings
        backoff = settings.reconnect_min_s
        try:
            events = self.ctx.reporter.store.recent_events(self.stream.id)
            self._last_result = next((e.body["result"] for e in events if e.kind == RESULT), None)
        except Exception:  # the database away: a play in progress may be reported again
            log.exception("stream %d: its last play could not be read", self.stream.id)
        # Stopped (the stream deleted, its URL changed, the server stopping): the play in
        # progress is not reported, it has not ended; whoever listens next reports its rest.
        while not self.stop_event.is_set():
            connected_at = time.monotonic()
            try:
                with open_stream(self.stream.url, self.ctx.options, self.stop_event) as blocks:
                    self._listen(blocks)
            except SongscanError as exc:
                log.info("stream %d: %s", self.stream.id, exc.message)
            except Exception:
                log.exception("stream %d: the listener failed; it reconnects", self.stream.id)
            if self.stop_event.is_set():
                break
            if self._down_since is None:
                self._down_since = time.time()
            self.recognizer.reset()
            if time.monotonic() - connected_at > settings.reconnect_max_s:
                backoff = settings.reconnect_min_s  # it ran a good while: start over
            self._wait_down(backoff)
            backoff = min(backoff * 2, settings.reconnect_max_s)

    def _wait_down(self, backoff: float) -> None:
        """Wait `backoff` seconds before reconnecting, ending the play in progress and
        notifying 650 as soon as the stream has been away past the gap tolerance."""
        until = time.monotonic() + backoff
        while not self.stop_event.is_set():
            away = time.time() - (self._down_since or time.time())
            self._emit(self.tracker.interrupted(away))
            tolerance = self.ctx.settings.gap_tolerance_s
            if away > tolerance and not self._notified_down:
                self._notify_down()
            left = until - time.monotonic()
            if left <= 0:
                return
            to_tolerance = tolerance - away
            self.stop_event.wait(min(left, to_tolerance + 0.05) if to_tolerance > 0 else left)

    def _listen(self, blocks: Iterator[np.ndarray]) -> None:
        rate = self.ctx.engine.fingerprint.sample_rate_hz
        window = self._window_buffer
        window.reset()  # a window cut by a reconnect is not recognised
        anchor: float | None = None
        received = 0  # samples of this connection
        window_from = 0  # position of the window in progress
        for block in blocks:
            if self.stop_event.is_set():
                return
            received += block.shape[0]
            estimate = time.time() - received / rate
            anchor = estimate if anchor is None else min(anchor, estimate)
            if self._down_since is not None:
                self._connected()
            for cut in window.add(block):
                if not cut.whole:
                    self._head(cut.samples)
                    continue
                start_s = anchor + window_from / rate - self.epoch
                window_from += window.window_n
                self._window(
                    Chunk(self._index, start_s, start_s + window.window_n / rate), cut.samples
                )
                self._index += 1

    def _head(self, samples: np.ndarray) -> None:
        """The first seconds of the window in progress: a play whose song is not heard in
        them ends now (`PlayTracker.next_window_begins`)."""

        def heard(track_id: int) -> bool:
            return self.recognizer.heard(track_id, samples)

        self._emit(self.tracker.next_window_begins(self._index, heard))

    def _connected(self) -> None:
        self._down_since = None
        if self._notified_down:
            self._notified_down = False
            self._notify(True, RUNNING_AGAIN, "the stream is running again")
        self.ctx.reporter.store.set_state(self.stream.id, True, None, self.ctx.owner)

    def _window(self, chunk: Chunk, samples: np.ndarray) -> None:
        revised, window = self.recognizer.add(chunk, samples)
        self._emit(self.tracker.add(revised, window))
        self._silence(window)

    def _silence(self, window: Window) -> None:
        if not window.silent:
            self._silent_s, self._notified_silence = 0.0, False
            return
        self._silent_s += window.chunk.end_s - window.chunk.start_s
        limit = self.ctx.settings.silence_notify_s
        if self._silent_s >= limit and not self._notified_silence:
            self._notified_silence = True
            self._notify(True, NO_MUSIC, f"no music for {limit:g} s: the stream is silent")

    def _notify_down(self) -> None:
        self._notified_down = True
        self.ctx.reporter.store.set_state(self.stream.id, False, CANT_CONNECT, self.ctx.owner)
        self._notify(False, CANT_CONNECT, "Recognition failed: can't connect to the stream")

    def _notify(self, running: bool, code: int, message: str) -> None:
        body = notification_body(self.stream.radio_id, running, code, message)
        self._report(NOTIFICATION, body)

    def _emit(self, events: list[PlayEvent]) -> None:
        before = self.stream.callbacks_before
        for event in events:
            if (event.kind == "started") != before:
                continue
            enterprise = self.ctx.reporter.enterprise_metadata(self.stream.account_id)
            body = result_body(
                self.stream.radio_id,
                event.play,
                self.epoch + event.play.start_s,
                with_length=not before,
                enterprise=enterprise,
            )
            last, self._last_result = self._last_result, None
            if last is not None and same_play(last, body["result"], CLOCKS_AGREE_S):
                log.info("stream %d: the play in progress was reported already", self.stream.id)
                continue
            self._report(RESULT, body)

    def _report(self, kind: str, body: dict[str, Any]) -> None:
        try:
            self.ctx.reporter.report(self.stream, kind, body, self.ctx.owner)
        except Exception:  # the database away: the event is lost, the listener goes on
            log.exception("stream %d: an event could not be recorded", self.stream.id)


ListenerFactory = Callable[[Stream], Listener]
