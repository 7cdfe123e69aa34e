"""A database that cannot be reached: its failures as `DatabaseUnavailable`, logged once.

While PostgreSQL restarts, every statement fails. Each failure becomes a `DatabaseUnavailable`
(code 100: the caller gets the contract's error, never a traceback), and the log says once
that the database is away (with the first failure's cause) and once that it is back, rather
than a traceback per request or per background sweep. The next statement after the database
is back reconnects (SQLAlchemy's `pool_pre_ping`, `catalogdb.Store`'s reconnect).
"""

from __future__ import annotations

import logging
import threading

from songscan.errors import DatabaseUnavailable

log = logging.getLogger("songscan.db")


class Outage:
    """The availability of one database, as this process last saw it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> DatabaseUnavailable:
        """The error to raise for `exc`, a lost or refused connection."""
        with self._lock:
            first, self.down = not self.down, True
        if first:
            log.warning(
                "the %s database is unavailable (%s: %s); requests fail with code 100 "
                "until it is back",
                self.what,
                type(exc).__name__,
                str(exc).strip().splitlines()[0] if str(exc).strip() else "",
            )
        return DatabaseUnavailable(f"the {self.what} database is unavailable; try again shortly")

    def connected(self) -> None:
        """A new connection was made: if the database was away, it is back."""
        with self._lock:
            back, self.down = self.down, False
        if back:
            log.warning("the %s database is back", self.what)
