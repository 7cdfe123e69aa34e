"""Requests per second per account: a token bucket per key, kept in this process's memory.

Several server processes each keep their own buckets, so the limit is per process; one
process per machine (or a proxy in front) keeps it exact.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from songscan.errors import SongscanError


class RateLimited(SongscanError):
    """Too many requests per second. The API answers HTTP 429 with `Retry-After`."""

    code = 429
    http_status = 429
    default_message = "too many requests per second for this token"

    def __init__(self, retry_after_s: float, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """`Retry-After` takes whole seconds; round up so the retry is not refused again."""
        return str(max(1, math.ceil(self.retry_after_s)))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after_header}


class TokenBuckets:
    """Each key may spend `rate_per_s` requests a second, in bursts of up to one second's worth."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def take(self, key: str, rate_per_s: float) -> None:
        """Spend one request for `key`, or raise RateLimited saying when one is available."""
        if rate_per_s <= 0:
            return  # no limit
        burst = max(1.0, rate_per_s)
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate_per_s)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RateLimited((1.0 - tokens) / rate_per_s)
            if len(self._buckets) >= self._max_keys and key not in self._buckets:
                self._buckets.clear()  # bound memory; a full bucket is what a new key gets anyway
            self._buckets[key] = (tokens - 1.0, now)
