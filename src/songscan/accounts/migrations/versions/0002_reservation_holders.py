"""Reservations name their holder; server processes keep a lease while they run.

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
