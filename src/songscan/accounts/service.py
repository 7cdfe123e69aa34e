"""The accounts service: who may call, what it costs, what is left.

`Accounts` is the one object the rest of songscan holds, over one database (SQLite or
PostgreSQL). It is made of three parts:

- `identity` (`identity.py`): sign-up, API tokens, log-in and its throttle, web sessions,
  the server's secrets;
- `ledger` (`ledger.py`): plans and credits, reservations and their settlement, the monthly
  roll-over, the rate limit, server leases and the sweep after dead servers, usage;
- `checkouts` (`checkouts.py`): the records of Stripe checkouts, webhook events and
  subscriptions (the Stripe side is `payments.py`).

The API and the job runner take one path per request, and that path is on `Accounts` itself:
`authenticate` → `entitlements` / `check_rate` → `with reservation(...) as held:` the work,
then `held.settle(...)` (`reserve` and `settle` are the steps beneath); or, for a standard
recognition, `with billed_after(...) as bill:` the work, then `bill.charge(...)`. Everything else is
asked of its part: `accounts.identity.login(...)`, `accounts.ledger.credit(...)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from songscan.accounts import tokens
from songscan.accounts.checkouts import Checkouts
from songscan.accounts.config import AccountsConfig
from songscan.accounts.db import database_url as resolve_database_url
from songscan.accounts.db import make_engine, upgrade
from songscan.accounts.identity import (
    LOGIN_FAILED,
    Account,
    Identity,
    LoginRefused,
    NewToken,
    SignupRefused,
)
from songscan.accounts.ledger import (
    PENDING,
    RELEASED,
    AccountStatus,
    Bill,
    Held,
    Ledger,
    Reservation,
    UsageRecord,
    error_status,
)
from songscan.accounts.plans import Entitlements, Plan, load_plans
from songscan.errors import ConfigError

mask_token = tokens.mask_token


class Accounts:
    """Identity, ledger and checkouts over one database; the request path on top."""

    def __init__(
        self,
        database_url: str | None,
        config: Mapping[str, Any],
        *,
        data_dir: Path | None = None,
        migrate: bool = True,
    ) -> None:
        self.config = AccountsConfig.from_config(config)
        self.plans = load_plans(config)
        for which in ("default_plan", "test_plan"):
            if getattr(self.config, which) not in self.plans:
                name = getattr(self.config, which)
                raise ConfigError(f"[accounts].{which}: no plan named {name!r}")
        self.database_url = resolve_database_url(data_dir, database_url or self.config.database_url)
        self.engine = make_engine(self.database_url)
        if migrate:
            upgrade(self.engine)
        self.identity = Identity(self.engine, self.config, self.plans)
        self.ledger = Ledger(self.engine, self.config, self.plans)
        self.checkouts = Checkouts(self.engine, self.config, self.ledger)

    @classmethod
    def open(cls, data_dir: Path, config: Mapping[str, Any]) -> Accounts:
        """The accounts of a data directory: SQLite in it (the settings pass any other URL)."""
        return cls(None, config, data_dir=data_dir)

    def close(self) -> None:
        self.engine.dispose()

    # -- the request path ---------------------------------------------------------------------

    def authenticate(self, token: str | None, client_addr: str) -> Account:
        """The account of `token`. MissingToken (901) without one, UnknownToken (900) when bad."""
        return self.identity.authenticate(token, client_addr)

    def account(self, account_id: int) -> Account:
        return self.identity.account(account_id)

    def plan(self, account: Account) -> Plan:
        return self.ledger.plan(account)

    def entitlements(self, account: Account) -> Entitlements:
        return self.ledger.entitlements(account)

    def check_rate(self, account: Account) -> None:
        """Raise RateLimited when the account is over its plan's requests per second."""
        self.ledger.check_rate(account)

    def remaining(self, account: Account) -> int:
        """Requests left before overage."""
        return self.ledger.remaining(account)

    def reservation(
        self, account: Account, n_requests: int, method: str
    ) -> AbstractContextManager[Held]:
        """`with accounts.reservation(account, n, method) as held:` (`Ledger.reservation`)."""
        return self.ledger.reservation(account, n_requests, method)

    def billed_after(
        self, account: Account, n_requests: int, method: str
    ) -> AbstractContextManager[Bill]:
        """`with accounts.billed_after(account, n, method) as bill:` (`Ledger.billed_after`)."""
        return self.ledger.billed_after(account, n_requests, method)

    def reserve(self, account: Account, n_requests: int, method: str) -> Reservation:
        return self.ledger.reserve(account, n_requests, method)

    def settle(self, reservation: Reservation, used: int, status: str, chunks: int) -> None:
        self.ledger.settle(reservation, used, status, chunks)

    def is_pending(self, entry_id: int) -> bool:
        return self.ledger.is_pending(entry_id)


__all__ = [
    "LOGIN_FAILED",
    "PENDING",
    "RELEASED",
    "Account",
    "AccountStatus",
    "Accounts",
    "AccountsConfig",
    "Held",
    "LoginRefused",
    "NewToken",
    "Reservation",
    "SignupRefused",
    "UsageRecord",
    "error_status",
    "mask_token",
]
