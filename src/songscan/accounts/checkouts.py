"""The records of Stripe checkouts and webhook events (the Stripe side is `payments.py`).

A checkout this server created is credited once: its row moves from `open` to `paid` in the
transaction of the webhook that reports it paid, which also records the event's id (a
retried delivery changes nothing) and writes the credit or the plan change to the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, insert, select, update

from songscan.accounts.config import AccountsConfig
from songscan.accounts.ledger import Ledger
from songscan.accounts.models import AccountRow, Checkout, StripeEvent, utcnow
from songscan.accounts.store import insert_ignore


class Checkouts:
    """Checkout sessions, webhook events and subscriptions over the accounts database."""

    def __init__(self, engine: Engine, config: AccountsConfig, ledger: Ledger) -> None:
        self.engine = engine
        self.config = config
        self.ledger = ledger

    def record(
        self, checkout_id: str, account_id: int, kind: str, item: str, requests: int, cents: int
    ) -> None:
        """Remember a checkout session this server created (`kind` pack or plan), open."""
        with self.engine.begin() as conn:
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

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One database transaction, for payments.py to handle a webhook atomically."""
        with self.engine.begin() as conn:
            yield conn

    def event_seen(self, conn: Connection, event_id: str, event_type: str) -> bool:
        """Record the event id; True when it had been handled before (a retried delivery)."""
        fresh = insert_ignore(
            conn,
            StripeEvent,
            {"id": event_id, "type": event_type[:64], "received_at": utcnow()},
        )
        return not fresh

    def fulfil(self, conn: Connection, checkout_id: str, subscription_id: str | None) -> str:
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
            self.ledger.add_credit(
                conn,
                row.account_id,
                int(row.requests),
                "purchase",
                checkout_id,
                f"{row.item} pack (Stripe)",
            )
            return f"credited {row.requests} requests"
        self.ledger.change_plan(conn, row.account_id, row.item)
        return f"plan set to {row.item}"

    def end_subscription(self, conn: Connection, subscription_id: str) -> str:
        """The account of a deleted subscription goes back to the default plan (unless it
        has moved to another plan since)."""
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
        self.ledger.roll_period(conn, row.account_id)
        return f"plan set back to {self.config.default_plan}"
