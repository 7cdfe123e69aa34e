"""What a stream reports, in AudD's shapes, and its delivery to the account's callback URL.

A result: `{"status":"success","result":{"radio_id","timestamp","play_length","results":[…]}}`
(`play_length` left out when it is sent at the play's start, `callbacks=before`); a
notification: `{"status":"-","notification":{"radio_id","stream_running","notification_code",
"notification_message"},"time":<unix>}`.

Durable: a callback is a row of the outbox (`stream_outbox`), written in the same transaction
as its event (`StreamStore.add_event`), owned by the listening process that wrote it, and
deleted once delivered or given up; its attempts and the time of the next one are in the row,
so a restart goes on with its schedule. The writer delivers it at once (`CallbackSender.wake`);
the supervisor's tick picks up what is left (a thread that failed, the rows of a listening
process that is gone: `adopt_callbacks` once its `stream_listeners` row has expired, as its
streams are taken over). At least once: a crash between a receiver's answer and the row's
delete sends that callback again, with the same `X-Songscan-Callback-Id` header (a
songscan extension) to de-duplicate by. Past `store.MAX_QUEUED` waiting callbacks an account's
oldest are dropped (logged).

Delivery: a POST of the JSON body to the account's callback URL as it is at that attempt
(`setCallbackUrl` since the event: the new URL and secret), with `X-Songscan-Signature:
t=<unix>,v1=<hex>` when the account set a secret (HMAC-SHA256 over `"<t>.<body>"`, as Stripe
signs webhooks; a songscan extension). A 2xx answer delivers it; anything else is tried again
after a back-off that doubles (`callback_backoff_s`), up to `callback_attempts` attempts, then
given up (logged with the URL's host only). One account's callbacks from one process go out
one at a time, in order (a receiver that fails holds back the later ones, not other
accounts'); each connection follows the `url=` rules (`sources.netguard`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from songscan.accounts.models import utcnow
from songscan.results import OutputOptions, song_json
from songscan.scan import SongMatch
from songscan.sources.netguard import AllowList, Deadline, check_url, guarded_client
from songscan.streams.plays import Play
from songscan.streams.settings import StreamsSettings
from songscan.streams.store import QueuedCallback, StreamStore

log = logging.getLogger("songscan.streams")

SIGNATURE_HEADER = "X-Songscan-Signature"
DELIVERY_HEADER = "X-Songscan-Callback-Id"  # the same on every attempt: for de-duplication
CANT_CONNECT = 650
NO_MUSIC = 651
RUNNING_AGAIN = 0  # songscan's: the stream plays again after a 650 (AudD documents none)


def result_body(
    radio_id: int, play: Play, wall_start: float, *, with_length: bool, enterprise: bool
) -> dict[str, Any]:
    """A play as AudD's stream callback carries it; `wall_start` is its start (unix time)."""
    song = song_json(
        _at_play_start(play), OutputOptions(enterprise_metadata=enterprise), standard=False
    )
    song["score"] = play.score
    result: dict[str, Any] = {
        "radio_id": radio_id,
        "timestamp": datetime.fromtimestamp(wall_start, UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }
    if with_length:
        result["play_length"] = round(play.length_s)
    result["results"] = [song]
    return {"status": "success", "result": result}


def same_play(earlier: dict[str, Any], later: dict[str, Any], tolerance_s: float) -> bool:
    """Whether result `later` is the rest of play `earlier` (two callbacks' `result`s): the
    same song, at the position where `earlier`'s play would have reached by then. A stream
    taken over mid-song by another listener hears the rest of a play its old owner reported
    at its start (`callbacks=before`)."""
    a, b = earlier["results"][0], later["results"][0]
    if any(a.get(key) != b.get(key) for key in ("audio_id", "artist", "title")):
        return False
    elapsed_s = _unix(later["timestamp"]) - _unix(earlier["timestamp"])
    moved_s = (b["timecode_ms"] - a["timecode_ms"]) / 1000 / (a.get("speed") or 1.0)
    return abs(moved_s - elapsed_s) <= tolerance_s + 1  # + whole seconds' truncation


def _unix(timestamp: str) -> float:
    return datetime.strptime(timestamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def _at_play_start(play: Play) -> SongMatch:
    """The play's song with its timecode where the play starts."""
    return replace(play.song, timecode_ms=play.timecode_ms)


def notification_body(radio_id: int, running: bool, code: int, message: str) -> dict[str, Any]:
    return {
        "status": "-",
        "notification": {
            "radio_id": radio_id,
            "stream_running": running,
            "notification_code": code,
            "notification_message": message,
        },
        "time": int(time.time()),
    }


def signature(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class CallbackSender:
    """Delivers the callbacks this process owns in the outbox: a thread per account with
    callbacks waiting, which ends when there are none left."""

    def __init__(
        self, store: StreamStore, owner: str, settings: StreamsSettings, allow: AllowList
    ) -> None:
        self.store = store
        self.owner = owner
        self.settings = settings
        self.allow = allow
        self._lock = threading.Lock()
        self._busy: set[int] = set()  # accounts with a thread delivering
        self._again: set[int] = set()  # ... and woken since it last looked
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.delivered = 0  # counters, for the metrics and tests
        self.failed = 0

    def wake(self, account_id: int) -> None:
        """The account has a new callback (or may have some waiting): deliver now."""
        with self._lock:
            if self._stopping.is_set():
                return
            if account_id in self._busy:
                self._again.add(account_id)
                return
            self._busy.add(account_id)
            thread = threading.Thread(
                target=self._drain,
                args=(account_id,),
                name=f"songscan-callbacks-{account_id}",
                daemon=True,
            )
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def tick(self) -> None:
        """The supervisor's tick: take over the callbacks of listening processes that are
        gone, and deliver every account's waiting ones (after a take-over, a restart, or a
        database failure that ended a thread)."""
        if taken := self.store.adopt_callbacks(self.owner):
            log.info("took over %d callback(s) of listening processes that are gone", taken)
        for account_id in self.store.callback_accounts(self.owner):
            self.wake(account_id)

    def stop(self) -> None:
        """No new attempt; wait for those under way (their outcome is recorded)."""
        with self._lock:
            self._stopping.set()
            threads = list(self._threads)
        deadline = time.monotonic() + self.settings.callback_timeout_s + 1
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _drain(self, account_id: int) -> None:
        try:
            while not self._stopping.is_set():
                queued = self.store.next_callback(self.owner, account_id)
                if queued is None:
                    with self._lock:
                        if account_id not in self._again:
                            return
                        self._again.discard(account_id)
                    continue
                wait_s = (queued.next_at - utcnow()).total_seconds()
                if wait_s > 0:  # its back-off; later ones wait behind it
                    self._stopping.wait(wait_s)
                    continue
                self._deliver(account_id, queued)
        except Exception:  # the database away: the next tick starts this again
            log.exception("account %d: delivering callbacks failed", account_id)
        finally:
            with self._lock:
                self._busy.discard(account_id)
                self._again.discard(account_id)

    def _deliver(self, account_id: int, queued: QueuedCallback) -> None:
        """One attempt, and its outcome in the outbox: delivered, given up, or due again
        after the back-off (`callback_backoff_s`, doubling)."""
        if queued.url is None:
            self.store.forget_callback(self.owner, queued.id)
            log.warning("account %d: a callback dropped, no callback URL is set", account_id)
            return
        if self._attempt(queued.url, queued):
            self.store.forget_callback(self.owner, queued.id)
            self.delivered += 1
            return
        attempts = queued.attempts + 1
        if attempts >= self.settings.callback_attempts:
            self.store.forget_callback(self.owner, queued.id)
            self.failed += 1
            log.warning(
                "account %d: a callback to %s was given up after %d attempts",
                account_id,
                _host(queued.url),
                attempts,
            )
            return
        backoff_s = self.settings.callback_backoff_s * 2 ** (attempts - 1)
        self.store.retry_callback(
            self.owner, queued.id, attempts, utcnow() + timedelta(seconds=backoff_s)
        )

    def _attempt(self, url: str, queued: QueuedCallback) -> bool:
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: queued.delivery_id}
        if queued.secret:
            headers[SIGNATURE_HEADER] = signature(queued.secret, queued.body, int(time.time()))
        timeout = self.settings.callback_timeout_s
        try:
            check_url(url, self.allow)
            with guarded_client(self.allow, Deadline(timeout)) as client:
                answer = client.post(url, content=queued.body, headers=headers)
            return 200 <= answer.status_code < 300
        except (httpx.HTTPError, OSError) as exc:
            log.info("callback to %s failed: %s", _host(url), type(exc).__name__)
            return False
        except Exception as exc:  # UrlFailed (the host went private) and the like
            log.info("callback to %s refused: %s", _host(url), exc)
            return False


def _host(url: str) -> str:
    """The callback's host only: its query may carry the receiver's own secrets."""
    try:
        return httpx.URL(url).host
    except httpx.InvalidURL:
        return "?"
