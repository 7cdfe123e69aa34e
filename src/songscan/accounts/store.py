"""The statements that identity, ledger and checkouts share on the accounts database.

Writing transactions are SQLAlchemy's `engine.begin()`; `read_only` is the one for reads (on
SQLite it does not take the write lock: see `db.py`). The statements of every request are built
once, with bound parameters: building a statement anew costs more CPU than SQLite takes to run
it (0.42 against 0.12 ms for a debit and its ledger entry). Every change of a balance goes through
`write_ledger` and `add_balance` in one transaction (`models.py`: the balance caches the
ledger's sum).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from songscan.accounts.db import READ_ONLY
from songscan.accounts.models import AccountRow, LedgerEntry, utcnow
from songscan.errors import NotFound


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A transaction that only reads (on SQLite it does not wait for the write lock)."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{READ_ONLY: True})
        with conn.begin():
            yield conn


def insert_ignore(conn: Connection, table: Any, values: dict[str, Any]) -> bool:
    """INSERT unless the key exists; True when a row was inserted. Never aborts the tx."""
    target: Table = table.__table__
    if conn.dialect.name == "postgresql":
        stmt: Any = postgresql.insert(target).values(**values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(target).values(**values).on_conflict_do_nothing()
    # RETURNING (not rowcount, which psycopg leaves at -1 here) tells whether a row went in.
    returned = conn.execute(stmt.returning(*target.primary_key.columns)).first()
    return returned is not None


_ACCOUNT_BY_ID = select(AccountRow).where(AccountRow.id == bindparam("account_id"))
_INSERT_LEDGER = insert(LedgerEntry)
_ADD_BALANCE = (
    update(AccountRow)
    .where(AccountRow.id == bindparam("account_id"))
    .values(balance=AccountRow.balance + bindparam("delta"))
)


def account_row(conn: Connection, account_id: int) -> Any:
    """The account's row; NotFound when there is none."""
    row = conn.execute(_ACCOUNT_BY_ID, {"account_id": account_id}).first()
    if row is None:
        raise NotFound(f"no account {account_id}")
    return row


def write_ledger(conn: Connection, account_id: int, kind: str, delta: int, **extra: Any) -> int:
    """Add a ledger entry (dated now); its id. The caller changes the balance to match."""
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
    result = conn.execute(_INSERT_LEDGER, values)
    entry_id = result.inserted_primary_key
    assert entry_id is not None
    return int(entry_id[0])


def add_balance(conn: Connection, account_id: int, delta: int) -> None:
    conn.execute(_ADD_BALANCE, {"account_id": account_id, "delta": delta})
