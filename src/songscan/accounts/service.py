"""The accounts service: who may call, what it costs, what is left.

The API calls, per request: `authenticate` → `entitlements` / `check_rate` → `reserve` → do the
work → `settle`. A reservation takes the requests out of the balance at once (so concurrent
requests can never overdraw it); `settle` bills what was used and gives the rest back.
The ledger (`ledger_entries`) is the single record of every credit and debit.

A pending reservation names its holder: the server instance that made it (a process that
keeps a lease in `server_leases` while it runs: `start_lease` / `renew_lease` / `end_lease`)
or, after `hand_over`, a long job. `release_abandoned` settles, unbilled, the reservations of
instances whose lease is gone (a killed server); a job's are left to the job runner.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from songscan.accounts import tokens
from songscan.accounts.db import READ_ONLY, make_engine, upgrade
from songscan.accounts.db import database_url as resolve_database_url
from songscan.accounts.models import (
    AccountRow,
    Checkout,
    LedgerEntry,
    LoginThrottle,
    PublicTokenUsage,
    ServerLease,
    ServerSecret,
    StripeEvent,
    WebSession,
    as_utc,
    utcnow,
)
from songscan.accounts.plans import Entitlements, Plan, load_plans
from songscan.accounts.ratelimit import FORGET_AFTER, LoginKey, TokenBuckets, login_keys, login_wait
from songscan.errors import (
    AlreadySettled,
    ConfigError,
    InvalidParameters,
    MissingToken,
    NotFound,
    QuotaExceeded,
    SongscanError,
    UnknownToken,
)

log = logging.getLogger("songscan.accounts")

mask_token = tokens.mask_token

CREDIT_KINDS = ("adjust", "transfer", "purchase", "bonus")
PENDING = "pending"
RELEASED = "released: server stopped"  # the status of a reservation its dead server held
JOB_HOLDER = "job:"  # prefix of the holder of a reservation that pays for a long job


class SignupRefused(InvalidParameters):
    """Sign-up input was refused (duplicate e-mail, weak password, bad address)."""


class LoginRefused(InvalidParameters):
    """Wrong e-mail or password, too many failed attempts, or a disabled account."""


# One answer for an unknown e-mail, a wrong password and a throttled attempt, so that none of
# them tells whether the address has an account (OWASP Authentication Cheat Sheet).
LOGIN_FAILED = (
    "wrong e-mail address or password (after several failed attempts, log-ins from your "
    "address must wait a few minutes)"
)


@dataclass(frozen=True)
class AccountsConfig:
    """The `[accounts]` section of songscan.toml."""

    free_requests: int = 300
    default_plan: str = "trial"
    test_token: bool = False
    test_daily_limit: int = 10
    test_plan: str = "trial"
    login_attempts: int = 5  # failed log-ins per e-mail and client address before waiting
    login_attempts_per_address: int = 30  # failed log-ins per client address, any e-mail
    login_lockout_minutes: int = 15  # the longest wait the back-off reaches
    session_days: int = 14
    secure_cookies: bool = False
    database_url: str | None = None
    server_lease_s: int = 30  # a server process unheard of this long is taken for dead

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AccountsConfig:
        section = config.get("accounts", {})
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"[accounts]: unknown key {key!r} (known: {', '.join(known)})")
            expected = type(getattr(cls(), key)) if key != "database_url" else str
            if not isinstance(value, expected) or (
                isinstance(value, bool) and expected is not bool
            ):
                raise ConfigError(f"[accounts].{key}: expected {expected.__name__}, got {value!r}")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class Account:
    """An account as the API sees it. For the public `test` token, `client_addr` is the caller."""

    id: int
    email: str | None
    plan: str
    token_hint: str
    disabled: bool
    is_test: bool
    created_at: datetime
    client_addr: str | None = None


@dataclass(frozen=True)
class NewToken:
    """A token shown in full exactly once: right after it was made."""

    account: Account
    token: str


@dataclass(frozen=True)
class Reservation:
    entry_id: int
    account_id: int
    requests: int
    method: str
    public_day: date | None = None  # set for the public `test` token
    client_addr: str | None = None


class Held:
    """A reservation being worked on (`Accounts.reservation`): settled once, by the work or by
    the block's end; `entry_id` is None when nothing was reserved (0 requests)."""

    def __init__(self, accounts: Accounts, reservation: Reservation | None) -> None:
        self._accounts = accounts
        self._reservation = reservation
        self._done = reservation is None

    @property
    def entry_id(self) -> int | None:
        return self._reservation.entry_id if self._reservation else None

    def settle(self, used: int, status: str, chunks: int) -> int:
        """Bill `used` of the reservation, give back the rest; what was billed. 0 when a crash
        sweep released it meanwhile (this process stalled longer than its lease): the work's
        answer is sent all the same, unbilled. A second call changes nothing."""
        if self._done or self._reservation is None:
            return 0
        self._done = True
        try:
            self._accounts.settle(self._reservation, used, status, chunks)
        except AlreadySettled:
            log.warning("reservation %d was released before it was settled", self.entry_id)
            return 0
        return used

    def hand_over(self, job_id: str) -> None:
        """Make a long job its holder: the job runner settles it when the job has finished."""
        if self._done or self._reservation is None:
            return
        self._done = True
        self._accounts.hand_over(self._reservation, job_id)


def error_status(exc: BaseException) -> str:
    """The ledger status of work that ended with `exc`."""
    return f"error {exc.code}" if isinstance(exc, SongscanError) else "error"


@dataclass(frozen=True)
class UsageRecord:
    time: datetime
    method: str
    chunks: int | None
    cost: int
    status: str


@dataclass(frozen=True)
class LedgerLine:
    time: datetime
    kind: str
    delta: int
    reference: str | None
    note: str | None


@dataclass(frozen=True)
class AccountStatus:
    account: Account
    plan: Plan
    remaining: int  # requests left before overage (negative while in overage)
    overage_left: int  # requests the plan still allows beyond `remaining`
    usage_by_day: list[tuple[date, int]]  # the last 30 UTC days, oldest first
    recent: list[UsageRecord]
    credits: list[LedgerLine]


def _account(row: Any) -> Account:
    return Account(
        id=row.id,
        email=row.email,
        plan=row.plan,
        token_hint=row.token_hint,
        disabled=row.disabled,
        is_test=row.is_test,
        created_at=as_utc(row.created_at),
    )


_ACCOUNT_COLUMNS = (
    AccountRow.id,
    AccountRow.email,
    AccountRow.plan,
    AccountRow.token_hint,
    AccountRow.disabled,
    AccountRow.is_test,
    AccountRow.created_at,
)


class Accounts:
    """Accounts, tokens, the ledger and plans over one database (SQLite or PostgreSQL)."""

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
        self.instance_id: str | None = None  # set by `start_lease`: the holder of reservations
        self._buckets = TokenBuckets()
        self._test_account_id = self._ensure_test_account() if self.config.test_token else None

    @classmethod
    def open(cls, data_dir: Path, config: Mapping[str, Any]) -> Accounts:
        """The accounts of a data directory (or of `$SONGSCAN_DATABASE_URL`)."""
        return cls(None, config, data_dir=data_dir)

    def close(self) -> None:
        self.engine.dispose()

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A transaction that only reads (on SQLite it does not wait for the write lock)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    def _insert_ignore(self, conn: Connection, table: Any, values: dict[str, Any]) -> bool:
        """INSERT unless the key exists; True when a row was inserted. Never aborts the tx."""
        target: Table = table.__table__
        if conn.dialect.name == "postgresql":
            stmt: Any = postgresql.insert(target).values(**values).on_conflict_do_nothing()
        else:
            stmt = sqlite.insert(target).values(**values).on_conflict_do_nothing()
        # RETURNING (not rowcount, which psycopg leaves at -1 here) tells whether a row went in.
        returned = conn.execute(stmt.returning(*target.primary_key.columns)).first()
        return returned is not None

    def _ledger(
        self, conn: Connection, account_id: int, kind: str, delta: int, **extra: Any
    ) -> int:
        now = utcnow()
        values = {
            "account_id": account_id,
            "created_at": now,
            "day": now.date(),
            "kind": kind,
            "delta": delta,
            "reserved": extra.pop("reserved", 0),
            **extra,
        }
        result = conn.execute(insert(LedgerEntry).values(**values))
        entry_id = result.inserted_primary_key
        assert entry_id is not None
        return int(entry_id[0])

    def _add_balance(self, conn: Connection, account_id: int, delta: int) -> None:
        conn.execute(
            update(AccountRow)
            .where(AccountRow.id == account_id)
            .values(balance=AccountRow.balance + delta)
        )

    def _row(self, conn: Connection, account_id: int) -> Any:
        row = conn.execute(select(AccountRow).where(AccountRow.id == account_id)).first()
        if row is None:
            raise NotFound(f"no account {account_id}")
        return row

    def _ensure_test_account(self) -> int:
        token_hash = tokens.hash_token(tokens.TEST_TOKEN)
        with self._tx() as conn:
            self._insert_ignore(
                conn,
                AccountRow,
                {
                    "email": None,
                    "token_hash": token_hash,
                    "token_hint": tokens.mask_token(tokens.TEST_TOKEN),
                    "plan": self.config.test_plan,
                    "balance": 0,
                    "period": "",
                    "disabled": False,
                    "is_test": True,
                    "created_at": utcnow(),
                },
            )
            found = conn.scalar(select(AccountRow.id).where(AccountRow.token_hash == token_hash))
        assert found is not None
        return int(found)

    # -- accounts and tokens --------------------------------------------------------------

    def create_account(
        self, email: str | None = None, password: str | None = None, plan: str | None = None
    ) -> NewToken:
        """A new account with its first free requests; the token is in the result, once."""
        plan = plan or self.config.default_plan
        if plan not in self.plans:
            raise SignupRefused(f"no plan named {plan!r} (plans: {', '.join(self.plans)})")
        if email is not None:
            email = tokens.normalise_email(email)
            if problem := tokens.email_problem(email):
                raise SignupRefused(problem)
        if password is not None and (problem := tokens.password_problem(password, email)):
            raise SignupRefused(problem)
        password_hash = tokens.hash_password(password) if password is not None else None
        token = tokens.new_token()
        now = utcnow()
        try:
            with self._tx() as conn:
                if email is not None and conn.scalar(
                    select(AccountRow.id).where(AccountRow.email == email)
                ):
                    raise SignupRefused("an account with this e-mail address already exists")
                result = conn.execute(
                    insert(AccountRow).values(
                        email=email,
                        password_hash=password_hash,
                        token_hash=tokens.hash_token(token),
                        token_hint=tokens.mask_token(token),
                        plan=plan,
                        balance=0,
                        period="",
                        disabled=False,
                        is_test=False,
                        created_at=now,
                    )
                )
                assert result.inserted_primary_key is not None
                account_id = int(result.inserted_primary_key[0])
                if self.config.free_requests > 0:
                    self._ledger(
                        conn,
                        account_id,
                        "bonus",
                        self.config.free_requests,
                        reference="signup",
                        note="free requests of a new account",
                    )
                    self._add_balance(conn, account_id, self.config.free_requests)
                row = self._row(conn, account_id)
        except IntegrityError as exc:  # two sign-ups with one address at the same moment
            raise SignupRefused("an account with this e-mail address already exists") from exc
        return NewToken(_account(row), token)

    def authenticate(self, token: str | None, client_addr: str) -> Account:
        """The account of `token`. MissingToken (901) without one, UnknownToken (900) when bad."""
        token = (token or "").strip()
        if not token:
            hint = " (api_token=test allows a few requests a day)" if self.config.test_token else ""
            raise MissingToken(f"no api_token was sent{hint}")
        if token == tokens.TEST_TOKEN:
            if self._test_account_id is None:
                raise UnknownToken("the public test token is not enabled on this server")
            return replace(self.account(self._test_account_id), client_addr=client_addr)
        if len(token) > 256:
            raise UnknownToken()
        with self._read() as conn:
            row = conn.execute(
                select(*_ACCOUNT_COLUMNS).where(AccountRow.token_hash == tokens.hash_token(token))
            ).first()
        if row is None:
            raise UnknownToken()
        if row.disabled:
            raise UnknownToken("the account of this api_token is disabled")
        return replace(_account(row), client_addr=client_addr)

    def account(self, account_id: int) -> Account:
        with self._read() as conn:
            return _account(self._row(conn, account_id))

    def find(self, ident: str) -> Account:
        """An account by id or e-mail address (admin commands)."""
        ident = ident.strip()
        with self._read() as conn:
            if ident.isdigit():
                row = conn.execute(select(AccountRow).where(AccountRow.id == int(ident))).first()
            else:
                email = tokens.normalise_email(ident)
                row = conn.execute(select(AccountRow).where(AccountRow.email == email)).first()
        if row is None:
            raise NotFound(f"no account {ident!r}")
        return _account(row)

    def list_accounts(self) -> list[tuple[Account, int]]:
        """Every account with its balance, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(AccountRow).order_by(AccountRow.id)).all()
        return [(_account(row), int(row.balance)) for row in rows]

    def rotate_token(self, account_id: int) -> NewToken:
        """A new token; the old one stops working with this transaction's commit."""
        token = tokens.new_token()
        with self._tx() as conn:
            row = self._row(conn, account_id)
            if row.is_test:
                raise InvalidParameters("the public test token cannot be rotated")
            conn.execute(
                update(AccountRow)
                .where(AccountRow.id == account_id)
                .values(token_hash=tokens.hash_token(token), token_hint=tokens.mask_token(token))
            )
            row = self._row(conn, account_id)
        return NewToken(_account(row), token)

    def set_plan(self, account_id: int, plan: str) -> Account:
        """Change the plan; the new plan's monthly requests are granted at once."""
        if plan not in self.plans:
            raise InvalidParameters(f"no plan named {plan!r} (plans: {', '.join(self.plans)})")
        with self._tx() as conn:
            self._row(conn, account_id)
            # Clearing the period makes the next roll-over expire the old plan's monthly
            # requests and grant the new plan's.
            conn.execute(
                update(AccountRow).where(AccountRow.id == account_id).values(plan=plan, period="")
            )
            self._roll_period(conn, account_id)
            return _account(self._row(conn, account_id))

    def set_disabled(self, account_id: int, disabled: bool = True) -> Account:
        with self._tx() as conn:
            self._row(conn, account_id)
            conn.execute(
                update(AccountRow).where(AccountRow.id == account_id).values(disabled=disabled)
            )
            if disabled:
                conn.execute(delete_sessions(account_id))
            return _account(self._row(conn, account_id))

    def credit(
        self,
        account_id: int,
        requests: int,
        *,
        kind: str = "adjust",
        reference: str | None = None,
        note: str | None = None,
    ) -> bool:
        """Add requests to the account. False (and nothing changes) when `reference` was
        already credited with this kind: a bank transfer or payment is credited once."""
        if kind not in CREDIT_KINDS:
            raise InvalidParameters(f"kind must be one of {', '.join(CREDIT_KINDS)}")
        if requests <= 0:
            raise InvalidParameters("the number of requests to credit must be positive")
        with self._tx() as conn:
            return self._credit(conn, account_id, requests, kind, reference, note)

    def _credit(
        self,
        conn: Connection,
        account_id: int,
        requests: int,
        kind: str,
        reference: str | None,
        note: str | None,
    ) -> bool:
        self._row(conn, account_id)
        now = utcnow()
        inserted = self._insert_ignore(
            conn,
            LedgerEntry,
            {
                "account_id": account_id,
                "created_at": now,
                "day": now.date(),
                "kind": kind,
                "delta": requests,
                "reserved": 0,
                "reference": reference,
                "note": note,
            },
        )
        if inserted:
            self._add_balance(conn, account_id, requests)
        return inserted

    # -- plans and entitlements -----------------------------------------------------------

    def plan(self, account: Account) -> Plan:
        return self.plans.get(account.plan) or self.plans[self.config.default_plan]

    def entitlements(self, account: Account) -> Entitlements:
        return self.plan(account).entitlements

    def check_rate(self, account: Account) -> None:
        """Raise RateLimited when the account is over its plan's requests per second."""
        key = f"test:{account.client_addr}" if account.is_test else f"account:{account.id}"
        self._buckets.take(key, self.entitlements(account).rate_limit_per_s)

    # -- metering ---------------------------------------------------------------------------

    def _roll_period(self, conn: Connection, account_id: int) -> None:
        """At the first use in a new calendar month (UTC): forgive last month's overage (it is
        recorded for invoicing), expire what is left of last month's grant, grant this month's.
        Claiming the month by a conditional UPDATE makes this happen once under concurrency."""
        period = utcnow().strftime("%Y-%m")
        claimed = conn.execute(
            update(AccountRow)
            .where(
                AccountRow.id == account_id,
                AccountRow.period != period,
                AccountRow.is_test.is_(False),
            )
            .values(period=period)
        ).rowcount
        if claimed != 1:
            return
        row = self._row(conn, account_id)
        plan = self.plans.get(row.plan) or self.plans[self.config.default_plan]
        balance = int(row.balance)
        change = 0
        if balance < 0:
            self._ledger(conn, account_id, "overage", -balance, note="overage to invoice")
            change += -balance
            balance = 0
        last_grant = conn.execute(
            select(LedgerEntry.id, LedgerEntry.delta)
            .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "grant")
            .order_by(LedgerEntry.id.desc())
            .limit(1)
        ).first()
        if last_grant is not None:
            used = -int(
                conn.scalar(
                    select(func.coalesce(func.sum(LedgerEntry.delta), 0)).where(
                        LedgerEntry.account_id == account_id,
                        LedgerEntry.kind == "usage",
                        LedgerEntry.id > last_grant.id,
                    )
                )
                or 0
            )
            expire = min(max(0, int(last_grant.delta) - used), balance)
            if expire > 0:
                self._ledger(conn, account_id, "expire", -expire, note="unused monthly requests")
                change -= expire
        if plan.monthly_requests > 0:
            self._ledger(
                conn,
                account_id,
                "grant",
                plan.monthly_requests,
                note=f"{plan.title} plan, {period}",
            )
            change += plan.monthly_requests
        if change:
            self._add_balance(conn, account_id, change)

    def remaining(self, account: Account) -> int:
        """Requests left before overage (what `reserve` may take without the plan's overage)."""
        with self._tx() as conn:
            if account.is_test:
                return self._public_left(conn, account)
            self._roll_period(conn, account.id)
            return int(self._row(conn, account.id).balance)

    def _public_left(self, conn: Connection, account: Account) -> int:
        used = conn.scalar(
            select(PublicTokenUsage.used).where(
                PublicTokenUsage.day == utcnow().date(),
                PublicTokenUsage.client_addr == (account.client_addr or ""),
            )
        )
        return max(0, self.config.test_daily_limit - int(used or 0))

    def reserve(self, account: Account, n_requests: int, method: str) -> Reservation:
        """Take `n_requests` out of what is left, atomically, before doing the work.

        Raises QuotaExceeded (902) when they are not all there (a scan is refused up front),
        unless the plan allows overage; UnknownToken when the account was disabled meanwhile.
        """
        if n_requests < 1:
            raise InvalidParameters("a reservation needs at least 1 request")
        if account.is_test:
            return self._reserve_public(account, n_requests, method)
        with self._tx() as conn:
            self._roll_period(conn, account.id)
            row = self._row(conn, account.id)
            plan = self.plans.get(row.plan) or self.plans[self.config.default_plan]
            taken = conn.execute(
                update(AccountRow)
                .where(
                    AccountRow.id == account.id,
                    AccountRow.disabled.is_(False),
                    AccountRow.balance - n_requests >= -plan.overage_limit,
                )
                .values(balance=AccountRow.balance - n_requests)
            ).rowcount
            if taken == 1:
                entry_id = self._ledger(
                    conn,
                    account.id,
                    "usage",
                    -n_requests,
                    reserved=n_requests,
                    method=method,
                    status=PENDING,
                    holder=self.instance_id,
                )
                return Reservation(entry_id, account.id, n_requests, method)
        if row.disabled:
            raise UnknownToken("the account of this api_token is disabled")
        raise QuotaExceeded(_quota_message(n_requests, max(0, int(row.balance))))

    def _reserve_public(self, account: Account, n_requests: int, method: str) -> Reservation:
        today = utcnow().date()
        addr = account.client_addr or ""
        limit = self.config.test_daily_limit
        with self._tx() as conn:
            self._insert_ignore(
                conn, PublicTokenUsage, {"day": today, "client_addr": addr, "used": 0}
            )
            taken = conn.execute(
                update(PublicTokenUsage)
                .where(
                    PublicTokenUsage.day == today,
                    PublicTokenUsage.client_addr == addr,
                    PublicTokenUsage.used + n_requests <= limit,
                )
                .values(used=PublicTokenUsage.used + n_requests)
            ).rowcount
            if taken == 1:
                entry_id = self._ledger(
                    conn,
                    account.id,
                    "usage",
                    -n_requests,
                    reserved=n_requests,
                    method=method,
                    status=PENDING,
                    note=f"{_PUBLIC_NOTE}{addr}"[:255],
                    holder=self.instance_id,
                )
                self._add_balance(conn, account.id, -n_requests)
                return Reservation(entry_id, account.id, n_requests, method, today, addr)
            left = self._public_left(conn, account)
        raise QuotaExceeded(
            f"the public test token allows {limit} requests a day per address; "
            + _quota_message(n_requests, left)
            + "; sign up for a token of your own"
        )

    def settle(self, reservation: Reservation, used: int, status: str, chunks: int) -> None:
        """Bill `used` (0 ≤ used ≤ reserved) of the reservation and give back the rest.

        Records the request for the dashboard. A reservation is settled once; settling it
        again raises AlreadySettled and changes nothing.
        """
        if not 0 <= used <= reservation.requests:
            raise ValueError(f"used must be between 0 and {reservation.requests}, got {used}")
        refund = reservation.requests - used
        with self._tx() as conn:
            done = conn.execute(
                update(LedgerEntry)
                .where(LedgerEntry.id == reservation.entry_id, LedgerEntry.status == PENDING)
                .values(delta=-used, status=status[:32], chunks=chunks)
            ).rowcount
            if done != 1:
                raise AlreadySettled(f"reservation {reservation.entry_id} is already settled")
            if refund:
                self._add_balance(conn, reservation.account_id, refund)
                if reservation.public_day is not None:
                    conn.execute(
                        update(PublicTokenUsage)
                        .where(
                            PublicTokenUsage.day == reservation.public_day,
                            PublicTokenUsage.client_addr == (reservation.client_addr or ""),
                        )
                        .values(used=PublicTokenUsage.used - refund)
                    )

    @contextmanager
    def reservation(self, account: Account, n_requests: int, method: str) -> Iterator[Held]:
        """Hold `n_requests` of the account's quota for the work in the block (QuotaExceeded
        when they are not there; nothing is held for 0). The block bills what it used with
        `held.settle(...)`, or hands the reservation to a long job; if it raises, nothing is
        billed and the ledger says which error ended it."""
        held = Held(self, self.reserve(account, n_requests, method) if n_requests else None)
        try:
            yield held
        except BaseException as exc:
            held.settle(0, error_status(exc), 0)
            raise
        held.settle(0, "unused", 0)  # a block that neither billed nor handed over: give back

    def hand_over(self, reservation: Reservation, job_id: str) -> None:
        """Make a long job the holder of a pending reservation: no server sweep releases it;
        the job runner settles it when the job has finished (`api/jobs.py`)."""
        with self._tx() as conn:
            conn.execute(
                update(LedgerEntry)
                .where(LedgerEntry.id == reservation.entry_id, LedgerEntry.status == PENDING)
                .values(holder=f"{JOB_HOLDER}{job_id}"[:64])
            )

    def is_pending(self, entry_id: int) -> bool:
        """Whether the reservation `entry_id` is still waiting to be settled."""
        with self._read() as conn:
            status = conn.scalar(select(LedgerEntry.status).where(LedgerEntry.id == entry_id))
        return status == PENDING

    # -- server leases ------------------------------------------------------------------------

    def start_lease(self) -> str:
        """Register this process as a live server instance; reservations it makes from now on
        are held by it. Renew the lease (`renew_lease`) well within `server_lease_s`."""
        self.instance_id = secrets.token_hex(16)
        self.renew_lease()  # takes the lease: nobody else has this id
        return self.instance_id

    def renew_lease(self) -> None:
        """Push this instance's lease `server_lease_s` on (taking it, the first time). A lease
        that lapsed (the process stalled longer than that) is taken again: what it held may
        already be released."""
        if self.instance_id is None:
            return
        now = utcnow()
        expires = now + timedelta(seconds=self.config.server_lease_s)
        with self._tx() as conn:
            self._insert_ignore(
                conn,
                ServerLease,
                {
                    "id": self.instance_id,
                    "host": socket.gethostname()[:255],
                    "pid": os.getpid(),
                    "started_at": now,
                    "expires_at": expires,
                },
            )
            conn.execute(
                update(ServerLease)
                .where(ServerLease.id == self.instance_id)
                .values(expires_at=expires)
            )

    def end_lease(self) -> None:
        """This instance stops (after its requests ended): what it still holds is released by
        the next sweep, its own or a sibling's."""
        if self.instance_id is None:
            return
        with self._tx() as conn:
            conn.execute(delete(ServerLease).where(ServerLease.id == self.instance_id))
        self.instance_id = None

    def release_abandoned(self) -> int:
        """Settle, unbilled, the pending reservations held by server instances whose lease is
        gone or expired (a server killed mid-request), with status `RELEASED`; forget expired
        leases. Reservations of live instances, of jobs and of no holder are left alone.
        Returns how many were released."""
        now = utcnow()
        live = select(ServerLease.id).where(ServerLease.expires_at > now)
        with self._tx() as conn:
            rows = conn.execute(
                select(
                    LedgerEntry.id,
                    LedgerEntry.account_id,
                    LedgerEntry.reserved,
                    LedgerEntry.method,
                    LedgerEntry.day,
                    LedgerEntry.note,
                    AccountRow.is_test,
                )
                .join(AccountRow, AccountRow.id == LedgerEntry.account_id)
                .where(
                    LedgerEntry.status == PENDING,
                    LedgerEntry.holder.is_not(None),
                    LedgerEntry.holder.not_like(f"{JOB_HOLDER}%"),
                    LedgerEntry.holder.not_in(live),
                )
            ).all()
            conn.execute(delete(ServerLease).where(ServerLease.expires_at <= now))
        released = 0
        for row in rows:
            public = row.is_test and (row.note or "").startswith(_PUBLIC_NOTE)
            reservation = Reservation(
                row.id,
                row.account_id,
                int(row.reserved),
                row.method or "",
                public_day=row.day if public else None,
                client_addr=(row.note or "")[len(_PUBLIC_NOTE) :] if public else None,
            )
            try:
                self.settle(reservation, 0, RELEASED, 0)
                released += 1
            except AlreadySettled:
                pass  # settled meanwhile: its server was alive after all, or a sibling swept
        return released

    def ledger_total(self, account_id: int) -> tuple[int, int]:
        """(sum of the ledger, cached balance): equal unless something is badly wrong."""
        with self._read() as conn:
            total = conn.scalar(
                select(func.coalesce(func.sum(LedgerEntry.delta), 0)).where(
                    LedgerEntry.account_id == account_id
                )
            )
            return int(total or 0), int(self._row(conn, account_id).balance)

    def status(self, account_id: int, days: int = 30, recent: int = 20) -> AccountStatus:
        """What the dashboard shows: plan, what is left, usage per day, recent requests."""
        today = utcnow().date()
        first_day = today - timedelta(days=days - 1)
        with self._tx() as conn:
            self._roll_period(conn, account_id)
            row = self._row(conn, account_id)
            per_day = dict(
                conn.execute(
                    select(LedgerEntry.day, func.sum(-LedgerEntry.delta))
                    .where(
                        LedgerEntry.account_id == account_id,
                        LedgerEntry.kind == "usage",
                        LedgerEntry.day >= first_day,
                    )
                    .group_by(LedgerEntry.day)
                ).all()
            )
            usage_rows = conn.execute(
                select(LedgerEntry)
                .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "usage")
                .order_by(LedgerEntry.id.desc())
                .limit(recent)
            ).all()
            credit_rows = conn.execute(
                select(LedgerEntry)
                .where(LedgerEntry.account_id == account_id, LedgerEntry.kind != "usage")
                .order_by(LedgerEntry.id.desc())
                .limit(recent)
            ).all()
        account = _account(row)
        plan = self.plan(account)
        balance = int(row.balance)
        return AccountStatus(
            account=account,
            plan=plan,
            remaining=balance,
            overage_left=max(0, plan.overage_limit + min(0, balance)),
            usage_by_day=[
                (day, int(per_day.get(day, 0) or 0))
                for day in (first_day + timedelta(days=i) for i in range(days))
            ],
            recent=[
                UsageRecord(
                    time=as_utc(r.created_at),
                    method=r.method or "",
                    chunks=r.chunks,
                    cost=-int(r.delta),
                    status=r.status or "",
                )
                for r in usage_rows
            ],
            credits=[
                LedgerLine(as_utc(r.created_at), r.kind, int(r.delta), r.reference, r.note)
                for r in credit_rows
            ],
        )

    # -- log-in and web sessions ------------------------------------------------------------

    def login(self, email: str, password: str, client_addr: str = "") -> Account:
        """The account whose e-mail and password these are, asked from `client_addr`.

        Failures are throttled per (e-mail, address) and per address (`ratelimit.login_keys`):
        a throttled attempt is refused unchecked, right password or not. Unknown e-mail,
        wrong password and throttled attempt all raise the same LoginRefused(LOGIN_FAILED),
        and an unknown e-mail costs a password hash like a known one.
        """
        email = tokens.normalise_email(email)
        keys = login_keys(
            email,
            client_addr,
            self.config.login_attempts,
            self.config.login_attempts_per_address,
        )
        if self._login_throttled(keys):
            raise LoginRefused(LOGIN_FAILED)
        with self._read() as conn:
            row = conn.execute(
                select(AccountRow).where(AccountRow.email == email, AccountRow.is_test.is_(False))
            ).first()
        if not tokens.verify_password(row.password_hash if row else None, password):
            self._login_failed(keys)
            raise LoginRefused(LOGIN_FAILED)
        assert row is not None
        if row.disabled:
            raise LoginRefused("this account is disabled")
        with self._tx() as conn:
            # The pair starts again; the address's count stays, or one account of one's own
            # would reset the throttle of an address that tries many.
            conn.execute(delete(LoginThrottle).where(LoginThrottle.key == keys[0].key))
            if tokens.password_needs_rehash(row.password_hash):
                conn.execute(
                    update(AccountRow)
                    .where(AccountRow.id == row.id)
                    .values(password_hash=tokens.hash_password(password))
                )
        return _account(row)

    def _login_throttled(self, keys: list[LoginKey]) -> bool:
        now = utcnow()
        with self._read() as conn:
            waits = conn.scalars(
                select(LoginThrottle.wait_until).where(
                    LoginThrottle.key.in_([k.key for k in keys]),
                    LoginThrottle.wait_until.is_not(None),
                )
            ).all()
        return any(as_utc(wait) > now for wait in waits if wait is not None)

    def _login_failed(self, keys: list[LoginKey]) -> None:
        """Count a failure against each key and set its wait; forget keys idle for a day."""
        now = utcnow()
        longest = timedelta(minutes=self.config.login_lockout_minutes)
        with self._tx() as conn:
            conn.execute(
                delete(LoginThrottle).where(LoginThrottle.last_failure_at < now - FORGET_AFTER)
            )
            for key in keys:
                self._insert_ignore(
                    conn, LoginThrottle, {"key": key.key, "failures": 0, "last_failure_at": now}
                )
                failures = conn.scalar(
                    update(LoginThrottle)
                    .where(LoginThrottle.key == key.key)
                    .values(failures=LoginThrottle.failures + 1, last_failure_at=now)
                    .returning(LoginThrottle.failures)
                )
                wait = login_wait(int(failures or 0), key.free_attempts, longest)
                if wait:
                    conn.execute(
                        update(LoginThrottle)
                        .where(LoginThrottle.key == key.key)
                        .values(wait_until=now + wait)
                    )

    def start_session(self, account_id: int) -> str:
        """A new web session; the id goes into a cookie, only its hash into the database."""
        session_id = tokens.new_session_id()
        now = utcnow()
        with self._tx() as conn:
            conn.execute(
                insert(WebSession).values(
                    id_hash=tokens.hash_token(session_id),
                    account_id=account_id,
                    created_at=now,
                    expires_at=now + timedelta(days=self.config.session_days),
                )
            )
        return session_id

    def session_account(self, session_id: str | None) -> Account | None:
        if not session_id or len(session_id) > 128:
            return None
        with self._read() as conn:
            row = conn.execute(
                select(*_ACCOUNT_COLUMNS, WebSession.expires_at)
                .join(WebSession, WebSession.account_id == AccountRow.id)
                .where(WebSession.id_hash == tokens.hash_token(session_id))
            ).first()
        if row is None or row.disabled or as_utc(row.expires_at) <= utcnow():
            return None
        return _account(row)

    def end_session(self, session_id: str | None) -> None:
        if not session_id:
            return
        with self._tx() as conn:
            conn.execute(
                delete(WebSession).where(WebSession.id_hash == tokens.hash_token(session_id))
            )

    def server_secret(self, name: str) -> str:
        """A random secret made once and shared by every process on this database."""
        with self._tx() as conn:
            self._insert_ignore(
                conn, ServerSecret, {"name": name, "value": tokens.new_session_id()}
            )
            value = conn.scalar(select(ServerSecret.value).where(ServerSecret.name == name))
        assert value is not None
        return str(value)

    # -- payments (the Stripe side is in payments.py) ----------------------------------------

    def record_checkout(
        self, checkout_id: str, account_id: int, kind: str, item: str, requests: int, cents: int
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(Checkout).values(
                    id=checkout_id,
                    account_id=account_id,
                    kind=kind,
                    item=item,
                    requests=requests,
                    amount_cents=cents,
                    status="open",
                    created_at=utcnow(),
                )
            )

    def stripe_event_seen(self, conn: Connection, event_id: str, event_type: str) -> bool:
        """Record the event id; True when it had been handled before (a retried delivery)."""
        fresh = self._insert_ignore(
            conn,
            StripeEvent,
            {"id": event_id, "type": event_type[:64], "received_at": utcnow()},
        )
        return not fresh

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One database transaction, for payments.py to handle a webhook atomically."""
        with self._tx() as conn:
            yield conn

    def fulfil_checkout(
        self, conn: Connection, checkout_id: str, subscription_id: str | None
    ) -> str:
        """Credit a paid checkout this server created, once. Returns what happened."""
        row = conn.execute(select(Checkout).where(Checkout.id == checkout_id)).first()
        if row is None:
            return "unknown checkout"
        claimed = conn.execute(
            update(Checkout)
            .where(Checkout.id == checkout_id, Checkout.status == "open")
            .values(status="paid", subscription_id=subscription_id)
        ).rowcount
        if claimed != 1:
            return "already credited"
        if row.kind == "pack":
            self._credit(
                conn,
                row.account_id,
                int(row.requests),
                "purchase",
                checkout_id,
                f"{row.item} pack (Stripe)",
            )
            return f"credited {row.requests} requests"
        conn.execute(
            update(AccountRow)
            .where(AccountRow.id == row.account_id)
            .values(plan=row.item, period="")
        )
        self._roll_period(conn, row.account_id)
        return f"plan set to {row.item}"

    def end_subscription(self, conn: Connection, subscription_id: str) -> str:
        row = conn.execute(
            select(Checkout.account_id, Checkout.item).where(
                Checkout.subscription_id == subscription_id
            )
        ).first()
        if row is None:
            return "unknown subscription"
        conn.execute(
            update(AccountRow)
            .where(AccountRow.id == row.account_id, AccountRow.plan == row.item)
            .values(plan=self.config.default_plan, period="")
        )
        self._roll_period(conn, row.account_id)
        return f"plan set back to {self.config.default_plan}"


def delete_sessions(account_id: int) -> Any:
    return delete(WebSession).where(WebSession.account_id == account_id)


_PUBLIC_NOTE = "test token from "  # the note of a public-token reservation, then the address


def _quota_message(needed: int, left: int) -> str:
    if needed > 1:
        return f"this scan needs {needed} requests (12-second chunks); {left} are left"
    return f"the request quota of this account is used up ({left} left)"


__all__ = [
    "LOGIN_FAILED",
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
