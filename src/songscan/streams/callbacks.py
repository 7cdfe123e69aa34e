"""What a stream reports, in AudD's shapes, and its delivery to the account's callback URL.

A result: `{"status":"success","result":{"radio_id","timestamp","play_length","results":[…]}}`
(`play_length` left out when it is sent at the play's start, `callbacks=before`); a
notification: `{"status":"-","notification":{"radio_id","stream_running","notification_code",
"notification_message"},"time":<unix>}`.

Delivery: a POST of the JSON body, with `X-Songscan-Signature: t=<unix>,v1=<hex>` when the
account set a secret (HMAC-SHA256 over `"<t>.<body>"`, as Stripe signs webhooks; a songscan
extension). A 2xx answer delivers it; anything else is tried again after a back-off that
doubles, up to `callback_attempts` attempts. One account's callbacks go out one at a time, in
order (a receiver that fails holds back the later ones, not other accounts'); each connection
follows the `url=` rules (`sources.netguard`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx

from songscan.results import OutputOptions, song_json
from songscan.scan import SongMatch
from songscan.sources.netguard import AllowList, Deadline, check_url, guarded_client
from songscan.streams.plays import Play
from songscan.streams.settings import StreamsSettings

log = logging.getLogger("songscan.streams")

SIGNATURE_HEADER = "X-Songscan-Signature"
CANT_CONNECT = 650
NO_MUSIC = 651
RUNNING_AGAIN = 0  # songscan's: the stream plays again after a 650 (AudD documents none)
MAX_QUEUED = 1000  # callbacks waiting per account; past it the oldest are dropped (logged)


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


@dataclass(frozen=True)
class Delivery:
    url: str
    secret: str | None
    body: bytes


class CallbackSender:
    """Delivers callbacks in the background: one thread per account with callbacks waiting."""

    def __init__(self, settings: StreamsSettings, allow: AllowList) -> None:
        self.settings = settings
        self.allow = allow
        self._lock = threading.Lock()
        self._queues: dict[int, deque[Delivery]] = {}
        self._busy: set[int] = set()
        self._stopping = threading.Event()
        self.delivered = 0  # counters, for the metrics and tests
        self.failed = 0

    def send(self, account_id: int, url: str, secret: str | None, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        with self._lock:
            queue = self._queues.setdefault(account_id, deque())
            if len(queue) >= MAX_QUEUED:
                queue.popleft()
                self.failed += 1
                log.warning(
                    "account %d: callback queue full, the oldest callback dropped", account_id
                )
            queue.append(Delivery(url, secret, data))
            if account_id in self._busy:
                return
            self._busy.add(account_id)
        threading.Thread(
            target=self._drain,
            args=(account_id,),
            name=f"songscan-callbacks-{account_id}",
            daemon=True,
        ).start()

    def stop(self) -> None:
        self._stopping.set()

    def _drain(self, account_id: int) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(account_id)
                if not queue or self._stopping.is_set():
                    self._busy.discard(account_id)
                    return
                delivery = queue.popleft()
            if self._deliver(delivery):
                self.delivered += 1
            else:
                self.failed += 1
                log.warning(
                    "account %d: a callback was given up after %d attempts",
                    account_id,
                    self.settings.callback_attempts,
                )

    def _deliver(self, delivery: Delivery) -> bool:
        wait = self.settings.callback_backoff_s
        for attempt in range(1, self.settings.callback_attempts + 1):
            if self._attempt(delivery):
                return True
            if attempt < self.settings.callback_attempts and self._stopping.wait(wait):
                return False
            wait *= 2
        return False

    def _attempt(self, delivery: Delivery) -> bool:
        headers = {"Content-Type": "application/json"}
        if delivery.secret:
            headers[SIGNATURE_HEADER] = signature(delivery.secret, delivery.body, int(time.time()))
        timeout = self.settings.callback_timeout_s
        try:
            check_url(delivery.url, self.allow)
            with guarded_client(self.allow, Deadline(timeout)) as client:
                answer = client.post(delivery.url, content=delivery.body, headers=headers)
            return 200 <= answer.status_code < 300
        except (httpx.HTTPError, OSError) as exc:
            log.info("callback to %s failed: %s", _host(delivery.url), type(exc).__name__)
            return False
        except Exception as exc:  # UrlFailed (the host went private) and the like
            log.info("callback to %s refused: %s", _host(delivery.url), exc)
            return False


def _host(url: str) -> str:
    """The callback's host only: its query may carry the receiver's own secrets."""
    try:
        return httpx.URL(url).host
    except httpx.InvalidURL:
        return "?"
