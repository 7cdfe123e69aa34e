"""What an account may spend: credits, plans' monthly requests, reservations, settlement.

A request's cost is reserved before the work (`reservation`, or `reserve`): the requests
leave the balance at once, so concurrent requests can never overdraw it; `settle` bills what
was used and gives the rest back. Work short enough to be billed once it is done (a standard
recognition: some 15 ms) is instead `billed_after`: the account is checked before the work and
charged after it, in one write transaction, with nothing pending meanwhile. The ledger
(`ledger_entries`) is the single record of every credit and debit; `accounts.balance` caches
its sum, changed in the same transaction.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, delete, func, select, update

from songscan.accounts.config import AccountsConfig
from songscan.accounts.identity import Account, account_of
from songscan.accounts.models import (
    AccountRow,
    LedgerEntry,
    PublicTokenUsage,
    ServerLease,
    as_utc,
    utcnow,
)
from songscan.accounts.plans import Entitlements, Plan
from songscan.accounts.ratelimit import TokenBuckets
from songscan.accounts.store import (
    account_row,
    add_balance,
    insert_ignore,
    read_only,
    write_ledger,
)
from songscan.errors import (
    AlreadySettled,
    InvalidParameters,
    QuotaExceeded,
    SongscanError,
    UnknownToken,
)

log = logging.getLogger("songscan.accounts")

CREDIT_KINDS = ("adjust", "transfer", "purchase", "bonus")
PENDING = "pending"
RELEASED = "released: server stopped"  # the status of a reservation its dead server held
JOB_HOLDER = "job:"  # prefix of the holder of a reservation that pays for a long job
_PUBLIC_NOTE = "test token from "  # the note of a public-token reservation, then the address

# The statements of every request, built once (`store.py`).
_DEBIT = (
    update(AccountRow)
    .where(
        AccountRow.id == bindparam("account_id"),
        AccountRow.disabled.is_(False),
        AccountRow.balance - bindparam("n") >= bindparam("least"),
    )
    .values(balance=AccountRow.balance - bindparam("n"))
)
_DEBIT_IN_PERIOD = _DEBIT.where(
    AccountRow.plan == bindparam("plan_name"), AccountRow.period == bindparam("period_now")
)
_SETTLE = (
    update(LedgerEntry)
    .where(LedgerEntry.id == bindparam("entry_id"), LedgerEntry.status == PENDING)
    .values(delta=bindparam("used"), status=bindparam("final"), chunks=bindparam("n_chunks"))
)


@dataclass(frozen=True)
class Reservation:
    entry_id: int
    account_id: int
    requests: int
    method: str
    public_day: date | None = None  # set for the public `test` token
    client_addr: str | None = None


class Held:
    """A reservation being worked on (`Ledger.reservation`): settled once, by the work or by
    the block's end; `entry_id` is None when nothing was reserved (0 requests)."""

    def __init__(self, ledger: Ledger, reservation: Reservation | None) -> None:
        self._ledger = ledger
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
            self._ledger.settle(self._reservation, used, status, chunks)
        except AlreadySettled:
            log.warning("reservation %d was released before it was settled", self.entry_id)
            return 0
        return used

    def hand_over(self, job_id: str) -> None:
        """Make a long job its holder: the job runner settles it when the job has finished."""
        if self._done or self._reservation is None:
            return
        self._done = True
        self._ledger.hand_over(self._reservation, job_id)


class Bill:
    """Work billed once it is done (`Ledger.billed_after`): `charge` takes and records the
    requests, once."""

    def __init__(self, ledger: Ledger, account: Account, n_requests: int, method: str) -> None:
        self._ledger = ledger
        self._account = account
        self._requests = n_requests
        self._method = method
        self.done = False  # charged, or refused when charged

    def charge(self, chunks: int) -> int:
        """Bill the requests (QuotaExceeded when they are no longer there); what was billed.
        A second call changes nothing."""
        if self.done:
            return 0
        self.done = True
        self._ledger.charge(self._account, self._requests, self._method, chunks)
        return self._requests


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


class Ledger:
    """Plans, credits, reservations and server leases over the accounts database."""

    def __init__(self, engine: Engine, config: AccountsConfig, plans: dict[str, Plan]) -> None:
        self.engine = engine
        self.config = config
        self.plans = plans
        self.instance_id: str | None = None  # set by `start_lease`: the holder of reservations
        self._buckets = TokenBuckets()

    # -- plans and entitlements -----------------------------------------------------------

    def plan(self, account: Account) -> Plan:
        return self._plan_named(account.plan)

    def _plan_named(self, name: str) -> Plan:
        return self.plans.get(name) or self.plans[self.config.default_plan]

    def entitlements(self, account: Account) -> Entitlements:
        return self.plan(account).entitlements

    def check_rate(self, account: Account) -> None:
        """Raise RateLimited when the account is over its plan's requests per second."""
        key = f"test:{account.client_addr}" if account.is_test else f"account:{account.id}"
        self._buckets.take(key, self.entitlements(account).rate_limit_per_s)

    def set_plan(self, account_id: int, plan: str) -> Account:
        """Change the plan; the new plan's monthly requests are granted at once."""
        if plan not in self.plans:
            raise InvalidParameters(f"no plan named {plan!r} (plans: {', '.join(self.plans)})")
        with self.engine.begin() as conn:
            account_row(conn, account_id)
            self.change_plan(conn, account_id, plan)
            return account_of(account_row(conn, account_id))

    def change_plan(self, conn: Connection, account_id: int, plan: str) -> None:
        """Put the account on `plan` in this transaction (a plan name the caller checked)."""
        # Clearing the period makes the roll-over expire the old plan's monthly requests and
        # grant the new plan's.
        conn.execute(
            update(AccountRow).where(AccountRow.id == account_id).values(plan=plan, period="")
        )
        self.roll_period(conn, account_id)

    # -- credits ----------------------------------------------------------------------------

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
        with self.engine.begin() as conn:
            return self.add_credit(conn, account_id, requests, kind, reference, note)

    def add_credit(
        self,
        conn: Connection,
        account_id: int,
        requests: int,
        kind: str,
        reference: str | None,
        note: str | None,
    ) -> bool:
        """`credit` within the caller's transaction, unchecked."""
        account_row(conn, account_id)
        now = utcnow()
        inserted = insert_ignore(
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
            add_balance(conn, account_id, requests)
        return inserted

    def roll_period(self, conn: Connection, account_id: int) -> None:
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
        row = account_row(conn, account_id)
        plan = self._plan_named(row.plan)
        balance = int(row.balance)
        change = 0
        if balance < 0:
            write_ledger(conn, account_id, "overage", -balance, note="overage to invoice")
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
                write_ledger(conn, account_id, "expire", -expire, note="unused monthly requests")
                change -= expire
        if plan.monthly_requests > 0:
            write_ledger(
                conn,
                account_id,
                "grant",
                plan.monthly_requests,
                note=f"{plan.title} plan, {period}",
            )
            change += plan.monthly_requests
        if change:
            add_balance(conn, account_id, change)

    # -- metering ---------------------------------------------------------------------------

    def remaining(self, account: Account) -> int:
        """Requests left before overage (what `reserve` may take without the plan's overage)."""
        with self.engine.begin() as conn:
            if account.is_test:
                return self._public_left(conn, account)
            self.roll_period(conn, account.id)
            return int(account_row(conn, account.id).balance)

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
        with self.engine.begin() as conn:
            self._take(conn, account, n_requests)
            return self._record_reservation(conn, account, n_requests, method)

    def _take(self, conn: Connection, account: Account, n_requests: int) -> None:
        """Take `n_requests` from what the account has left, in the caller's transaction:
        QuotaExceeded (902) when they are not all there (beyond the plan's overage),
        UnknownToken when the account is disabled. The public test token's come out of the
        caller's address's daily allowance."""
        if account.is_test:
            self._take_public(conn, account, n_requests)
            return
        # Usually one statement: the account is in this month's period and on the plan it was
        # authenticated with. Otherwise the month is rolled over first and the plan re-read.
        plan = self._plan_named(account.plan)
        if self._debit(conn, account.id, n_requests, plan, utcnow().strftime("%Y-%m")):
            return
        self.roll_period(conn, account.id)
        row = account_row(conn, account.id)
        if self._debit(conn, account.id, n_requests, self._plan_named(row.plan)):
            return
        if row.disabled:
            raise UnknownToken("the account of this api_token is disabled")
        raise QuotaExceeded(_quota_message(n_requests, max(0, int(row.balance))))

    @staticmethod
    def _debit(
        conn: Connection, account_id: int, n_requests: int, plan: Plan, period: str | None = None
    ) -> bool:
        """The conditional debit of an enabled account's balance, on `plan` (and in `period`
        when given), within the plan's overage; whether it was made."""
        params: dict[str, int | str] = {
            "account_id": account_id,
            "n": n_requests,
            "least": -plan.overage_limit,
        }
        if period is None:
            return bool(conn.execute(_DEBIT, params).rowcount == 1)
        params |= {"plan_name": plan.name, "period_now": period}
        return bool(conn.execute(_DEBIT_IN_PERIOD, params).rowcount == 1)

    def _take_public(self, conn: Connection, account: Account, n_requests: int) -> None:
        today = utcnow().date()
        addr = account.client_addr or ""
        insert_ignore(conn, PublicTokenUsage, {"day": today, "client_addr": addr, "used": 0})
        taken = conn.execute(
            update(PublicTokenUsage)
            .where(
                PublicTokenUsage.day == today,
                PublicTokenUsage.client_addr == addr,
                PublicTokenUsage.used + n_requests <= self.config.test_daily_limit,
            )
            .values(used=PublicTokenUsage.used + n_requests)
        ).rowcount
        if taken != 1:
            raise self._public_refusal(n_requests, self._public_left(conn, account))
        add_balance(conn, account.id, -n_requests)

    def _public_refusal(self, n_requests: int, left: int) -> QuotaExceeded:
        return QuotaExceeded(
            f"the public test token allows {self.config.test_daily_limit} requests a day per "
            f"address; {_quota_message(n_requests, left)}; sign up for a token of your own"
        )

    def check_available(self, account: Account, n_requests: int) -> None:
        """Raise as `reserve` would when the account cannot pay `n_requests` now, taking
        nothing: a read (the month is rolled over first when it has to be). Work billed once
        it is done (`billed_after`) is so refused up front in all but a race."""
        with read_only(self.engine) as conn:
            if account.is_test:
                left = self._public_left(conn, account)
                if left < n_requests:
                    raise self._public_refusal(n_requests, left)
                return
            row = account_row(conn, account.id)
        if row.period != utcnow().strftime("%Y-%m"):
            self.remaining(account)  # rolls the month over: a write, once a month
            with read_only(self.engine) as conn:
                row = account_row(conn, account.id)
        if row.disabled:
            raise UnknownToken("the account of this api_token is disabled")
        if int(row.balance) - n_requests < -self._plan_named(row.plan).overage_limit:
            raise QuotaExceeded(_quota_message(n_requests, max(0, int(row.balance))))

    def _record_reservation(
        self,
        conn: Connection,
        account: Account,
        n_requests: int,
        method: str,
    ) -> Reservation:
        """The pending ledger entry of requests just taken (in the caller's transaction), held
        by this server instance; a public-token one notes the client address."""
        public_day = utcnow().date() if account.is_test else None
        client_addr = (account.client_addr or "") if account.is_test else None
        entry_id = write_ledger(
            conn,
            account.id,
            "usage",
            -n_requests,
            reserved=n_requests,
            method=method,
            status=PENDING,
            note=_public_note(account),
            holder=self.instance_id,
        )
        return Reservation(entry_id, account.id, n_requests, method, public_day, client_addr)

    def settle(self, reservation: Reservation, used: int, status: str, chunks: int) -> None:
        """Bill `used` (0 ≤ used ≤ reserved) of the reservation and give back the rest.

        Records the request for the dashboard. A reservation is settled once; settling it
        again raises AlreadySettled and changes nothing.
        """
        if not 0 <= used <= reservation.requests:
            raise ValueError(f"used must be between 0 and {reservation.requests}, got {used}")
        refund = reservation.requests - used
        with self.engine.begin() as conn:
            done = conn.execute(
                _SETTLE,
                {
                    "entry_id": reservation.entry_id,
                    "used": -used,
                    "final": status[:32],
                    "n_chunks": chunks,
                },
            ).rowcount
            if done != 1:
                raise AlreadySettled(f"reservation {reservation.entry_id} is already settled")
            if refund:
                add_balance(conn, reservation.account_id, refund)
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

    @contextmanager
    def billed_after(self, account: Account, n_requests: int, method: str) -> Iterator[Bill]:
        """For work short enough to be billed once it is done (a standard recognition):
        nothing is written before it. The account must have the requests at the start
        (QuotaExceeded, as `reservation`, but nothing is taken); the block's
        `bill.charge(chunks)` takes them and records the request in one transaction, so a
        crash during the work leaves nothing to release and a reply is only sent for a request
        that is billed. If concurrent requests took the last of them meanwhile, `charge` raises
        QuotaExceeded (the work is not answered). If the block raises, nothing is billed and
        the ledger says which error ended it."""
        self.check_available(account, n_requests)
        bill = Bill(self, account, n_requests, method)
        try:
            yield bill
        except BaseException as exc:
            if not bill.done:
                self._record_failure(account, n_requests, method, error_status(exc))
            raise

    def charge(self, account: Account, n_requests: int, method: str, chunks: int) -> None:
        """Take `n_requests` and record them as a request billed in full, in one transaction."""
        with self.engine.begin() as conn:
            self._take(conn, account, n_requests)
            write_ledger(
                conn,
                account.id,
                "usage",
                -n_requests,
                reserved=n_requests,
                method=method,
                status="ok",
                chunks=chunks,
                note=_public_note(account),
            )

    def _record_failure(self, account: Account, n_requests: int, method: str, status: str) -> None:
        """The ledger line of work billed after that failed: nothing taken (as a reservation
        settled with nothing used)."""
        with self.engine.begin() as conn:
            write_ledger(
                conn,
                account.id,
                "usage",
                0,
                reserved=n_requests,
                method=method,
                status=status[:32],
                chunks=0,
            )

    def hand_over(self, reservation: Reservation, job_id: str) -> None:
        """Make a long job the holder of a pending reservation: no server sweep releases it;
        the job runner settles it when the job has finished (`api/jobs.py`)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(LedgerEntry)
                .where(LedgerEntry.id == reservation.entry_id, LedgerEntry.status == PENDING)
                .values(holder=f"{JOB_HOLDER}{job_id}"[:64])
            )

    def is_pending(self, entry_id: int) -> bool:
        """Whether the reservation `entry_id` is still waiting to be settled."""
        with read_only(self.engine) as conn:
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
        with self.engine.begin() as conn:
            insert_ignore(
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
        with self.engine.begin() as conn:
            conn.execute(delete(ServerLease).where(ServerLease.id == self.instance_id))
        self.instance_id = None

    def release_abandoned(self) -> int:
        """Settle, unbilled, the pending reservations held by server instances whose lease is
        gone or expired (a server killed mid-request), with status `RELEASED`; forget expired
        leases. Reservations of live instances, of jobs and of no holder are left alone.
        Returns how many were released."""
        now = utcnow()
        live = select(ServerLease.id).where(ServerLease.expires_at > now)
        with self.engine.begin() as conn:
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

    # -- what is recorded ---------------------------------------------------------------------

    def sum_and_balance(self, account_id: int) -> tuple[int, int]:
        """(sum of the ledger, cached balance): equal unless something is badly wrong."""
        with read_only(self.engine) as conn:
            total = conn.scalar(
                select(func.coalesce(func.sum(LedgerEntry.delta), 0)).where(
                    LedgerEntry.account_id == account_id
                )
            )
            return int(total or 0), int(account_row(conn, account_id).balance)

    def status(self, account_id: int, days: int = 30, recent: int = 20) -> AccountStatus:
        """What the dashboard shows: plan, what is left, usage per day, recent requests."""
        today = utcnow().date()
        first_day = today - timedelta(days=days - 1)
        with self.engine.begin() as conn:
            self.roll_period(conn, account_id)
            row = account_row(conn, account_id)
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
        account = account_of(row)
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


def _quota_message(needed: int, left: int) -> str:
    if needed > 1:
        return f"this scan needs {needed} requests (12-second chunks); {left} are left"
    return f"the request quota of this account is used up ({left} left)"


def _public_note(account: Account) -> str | None:
    """The note of a public-token ledger line: the client address whose daily allowance paid
    (`release_stale` reads it back)."""
    return f"{_PUBLIC_NOTE}{account.client_addr or ''}"[:255] if account.is_test else None
