"""catalog_state: the version readers watch for changes, and the index's format.

Readers used to watch SQLite's `PRAGMA data_version`, and the format was SQLite's
`user_version`; neither exists elsewhere. The format is carried over from user_version. The
trigger that deleted a track's peaks with it goes: the catalog deletes them itself.

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


def upgrade() -> None:
    state = op.create_table(
        "catalog_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("format", sa.Integer, nullable=False),
    )
    bind = op.get_bind()
    fmt = 0  # a new database: the catalog stamps its format on first open
    if bind.dialect.name == "sqlite":
        fmt = int(bind.exec_driver_sql("PRAGMA user_version").scalar() or 0)
        op.execute("DROP TRIGGER IF EXISTS tracks_drop_peaks")
        op.execute("DELETE FROM peaks WHERE track_id NOT IN (SELECT id FROM tracks)")
    op.bulk_insert(state, [{"id": 1, "version": 0, "format": fmt}])


def downgrade() -> None:
    op.drop_table("catalog_state")
