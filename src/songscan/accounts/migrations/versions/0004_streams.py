"""Live streams (AudD's streams API): callback URLs, streams, their listeners' leases, events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "stream_callbacks",
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(255), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "streams",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("radio_id", sa.BigInteger(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("callbacks_before", sa.Boolean(), nullable=False),
        sa.Column("longpoll_category", sa.String(9), nullable=False),
        sa.Column("running", sa.Boolean(), nullable=False),
        sa.Column("state_code", sa.Integer(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.UniqueConstraint("account_id", "radio_id", name="uq_stream_radio"),
    )
    op.create_index("ix_streams_account_id", "streams", ["account_id"])
    op.create_index("ix_streams_longpoll_category", "streams", ["longpoll_category"])
    op.create_table(
        "stream_leases",
        sa.Column(
            "stream_id",
            sa.Integer(),
            sa.ForeignKey("streams.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )
    op.create_table(
        "stream_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "stream_id",
            sa.Integer(),
            sa.ForeignKey("streams.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("longpoll_category", sa.String(9), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )
    op.create_index("ix_stream_events_stream_id", "stream_events", ["stream_id"])
    op.create_index("ix_stream_events_category_at", "stream_events", ["longpoll_category", "at_ms"])


def downgrade() -> None:
    op.drop_table("stream_events")
    op.drop_table("stream_leases")
    op.drop_index("ix_streams_longpoll_category", table_name="streams")
    op.drop_index("ix_streams_account_id", table_name="streams")
    op.drop_table("streams")
    op.drop_table("stream_callbacks")
