"""Rate limits: requests per second per account, and the back-off of failed log-ins.

Requests per second are a token bucket per key, kept in this process's memory: several
server processes each keep their own buckets, so the limit is per process; one process per
machine (or a proxy in front) keeps it exact. Failed log-ins are counted in the accounts
database instead (see `login_keys`), so that every process enforces the same back-off.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

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


# -- failed log-ins ---------------------------------------------------------------------------
#
# OWASP's Authentication Cheat Sheet: throttle failed log-ins without letting a stranger lock
# the owner out. Failures are counted per (e-mail, client address) pair and per client
# address; past its free attempts a key waits, twice as long after each further failure.
# The e-mail is counted whether or not an account has it, so the throttle tells nothing
# about which addresses have accounts. The counts live in the accounts database
# (`login_throttle`), where every server process sees them.

FIRST_WAIT_S = 30.0  # the wait after a key's last free attempt; doubled by each further failure
FORGET_AFTER = timedelta(days=1)  # a key with no failure for this long starts again at zero


@dataclass(frozen=True)
class LoginKey:
    """One throttled key: its stored form and how many failures it may have before waiting."""

    key: str
    free_attempts: int


def login_keys(email: str, client_addr: str, per_pair: int, per_address: int) -> list[LoginKey]:
    """The keys a log-in attempt counts against (hashed: the table holds no e-mail address)."""

    def hashed(value: str) -> str:
        return hashlib.sha256(value.encode()).hexdigest()

    return [
        LoginKey(hashed(f"pair\0{email}\0{client_addr}"), per_pair),
        LoginKey(hashed(f"addr\0{client_addr}"), per_address),
    ]


def login_wait(failures: int, free_attempts: int, longest: timedelta) -> timedelta:
    """How long a key waits after its `failures`-th failure in a row (zero while free)."""
    beyond = failures - free_attempts
    if beyond < 0:
        return timedelta(0)
    wait_s = FIRST_WAIT_S * 2 ** min(beyond, 30)  # min(): no float overflow, `longest` caps it
    return min(timedelta(seconds=wait_s), longest)
