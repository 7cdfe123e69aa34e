"""What a server process does so that a crash of it, or of a sibling, leaves nothing behind.

At start-up it takes a lease in the accounts database (`Ledger.start_lease`): the
reservations it makes carry the lease's id. A thread renews the lease every third of
`[accounts] server_lease_s` and sweeps, as it does once at start-up: pending reservations of
instances whose lease expired are released (`Ledger.release_abandoned`), request media
directories no live process holds are removed (`remove_orphan_media`). Several processes
share the database and the temp dir; each only ever removes what a dead one left.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from songscan.accounts.service import Accounts
from songscan.errors import DatabaseUnavailable
from songscan.sources import remove_orphan_media

log = logging.getLogger("songscan.api")


class Housekeeping:
    """The lease of this server process, and the sweeps after dead ones."""

    def __init__(self, accounts: Accounts, tmp_dir: Path | None) -> None:
        self.accounts = accounts
        self.tmp_dir = tmp_dir
        self.interval_s = accounts.config.server_lease_s / 3
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.accounts.ledger.start_lease()
        self.sweep()
        self._thread = threading.Thread(target=self._loop, name="songscan-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """After the requests ended: the lease ends, what it still holds is free to sweep."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.accounts.ledger.end_lease()

    def sweep(self) -> None:
        released = self.accounts.ledger.release_abandoned()
        if released:
            log.warning("released %d reservations of stopped server processes", released)
        removed = remove_orphan_media(self.tmp_dir)
        if removed:
            log.warning("removed %d media directories of stopped server processes", removed)

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.accounts.ledger.renew_lease()
                self.sweep()
            except DatabaseUnavailable:  # away for a while (logged once): try again next time
                pass
            except Exception:
                log.exception("renewing the server lease failed; it carries on")
