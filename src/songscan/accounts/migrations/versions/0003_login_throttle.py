"""Failed log-ins are throttled per (e-mail, client address) and per address, not per account.

The account's own counter (`failed_logins`, `locked_until`) let anyone lock its owner out;
`login_throttle` replaces it (see `songscan.accounts.ratelimit.login_keys`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", _TS, nullable=False),
        sa.Column("wait_until", _TS, nullable=True),
    )
    op.create_index("ix_login_throttle_last_failure_at", "login_throttle", ["last_failure_at"])
    # Plain ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35, PostgreSQL): a batch copy of `accounts`
    # would have to drop a table that other tables' foreign keys point at.
    op.drop_column("accounts", "failed_logins")
    op.drop_column("accounts", "locked_until")


def downgrade() -> None:
    op.add_column("accounts", sa.Column("locked_until", _TS, nullable=True))
    op.add_column(
        "accounts",
        sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"),
    )
    op.drop_index("ix_login_throttle_last_failure_at", table_name="login_throttle")
    op.drop_table("login_throttle")
