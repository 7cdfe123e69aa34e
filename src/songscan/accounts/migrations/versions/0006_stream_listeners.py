"""`stream_listeners`: the processes that listen to streams, each alive while its row's
`expires_at` is ahead (renewed with its stream leases, every third of `[streams] lease_s`).

A process's fair share of the streams is all the streams over these rows; the server
instances (`server_leases`) are not the right count once API nodes serve the methods and only
the scan workers listen (SONGSCAN_BROKER_URL set).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_listeners",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stream_listeners")
