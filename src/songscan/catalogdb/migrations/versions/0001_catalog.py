"""The catalog as songscan kept it before it had migrations: tracks and their peaks.

A data directory written then is stamped with this revision (not migrated through it).

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tracks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.Text, nullable=False, server_default=""),
        sa.Column("audio_id", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        *(
            sa.Column(name, sa.Text)
            for name in (
                "artist",
                "title",
                "album",
                "release_date",
                "label",
                "isrc",
                "upc",
                "song_link",
                "source",
            )
        ),
        sa.Column("duration_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("hash_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("added_at", sa.Float, nullable=False),
        sa.CheckConstraint("state IN ('pending', 'ready')", name="tracks_state"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "tracks_audio_id",
        "tracks",
        ["owner", "audio_id"],
        unique=True,
        sqlite_where=sa.text("state = 'ready'"),
        postgresql_where=sa.text("state = 'ready'"),
    )
    op.create_table(
        "peaks",
        sa.Column("track_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("time_frames", sa.LargeBinary, nullable=False),
        sa.Column("freq_hz", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("peaks")
    op.drop_index("tracks_audio_id", table_name="tracks")
    op.drop_table("tracks")
