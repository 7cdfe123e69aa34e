"""Alembic environment for the accounts schema; run programmatically by `accounts.db.upgrade`."""

from __future__ import annotations

from alembic import context

from songscan.accounts.db import VERSION_TABLE
from songscan.accounts.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `accounts.db.upgrade` runs these migrations
    raise RuntimeError("run the accounts migrations through songscan.accounts.db.upgrade()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
