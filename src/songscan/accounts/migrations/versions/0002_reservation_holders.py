"""Reservations name their holder; server processes keep a lease while they run.

Reservations left pending before this revision were made by servers that no longer run (the
upgrade restarts them): they get a holder with no lease, `pre-0002`, so the first sweep
releases them. A queued long job whose reservation this releases reserves again when it runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.add_column(sa.Column("holder", sa.String(64), nullable=True))
    op.create_index("ix_ledger_status_holder", "ledger_entries", ["status", "holder"])
    ledger = sa.table("ledger_entries", sa.column("status"), sa.column("holder"))
    op.execute(ledger.update().where(ledger.c.status == "pending").values(holder="pre-0002"))
    op.create_table(
        "server_leases",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("server_leases")
    op.drop_index("ix_ledger_status_holder", "ledger_entries")
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("holder")
