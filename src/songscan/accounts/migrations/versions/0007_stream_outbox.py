"""`stream_outbox`: stream callbacks waiting for delivery, in the database instead of a
listening process's memory, so that a crash (kill -9, the OOM killer, a lost machine) loses
none: each row is written with its event, and deleted once delivered or given up.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_outbox",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("delivery_id", sa.String(32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_stream_outbox_account", "stream_outbox", ["account_id", "id"])
    op.create_index("ix_stream_outbox_owner", "stream_outbox", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_stream_outbox_owner", table_name="stream_outbox")
    op.drop_index("ix_stream_outbox_account", table_name="stream_outbox")
    op.drop_table("stream_outbox")
