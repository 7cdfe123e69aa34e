"""The catalog's tables, as SQLAlchemy declares them (Alembic's target; a test checks that
the migrations build exactly this, on SQLite and PostgreSQL). The queries themselves are in
`songscan.catalog`, through the DB-API driver (see the package docstring)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)

metadata = MetaData()

tracks = Table(
    "tracks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", Text, nullable=False, server_default=""),  # "" shared, else account id
    Column("audio_id", BigInteger, nullable=False),
    Column("state", Text, nullable=False),  # pending until its postings are durable
    Column("artist", Text),
    Column("title", Text),
    Column("album", Text),
    Column("release_date", Text),
    Column("label", Text),
    Column("isrc", Text),
    Column("upc", Text),
    Column("song_link", Text),
    Column("source", Text),
    Column("duration_s", Float, nullable=False, server_default="0"),
    Column("hash_count", Integer, nullable=False, server_default="0"),
    Column("added_at", Float, nullable=False),
    CheckConstraint("state IN ('pending', 'ready')", name="tracks_state"),
    sqlite_autoincrement=True,
)
# One ready track per (owner, audio_id): a replacement flips in the same transaction.
Index(
    "tracks_audio_id",
    tracks.c.owner,
    tracks.c.audio_id,
    unique=True,
    sqlite_where=text("state = 'ready'"),
    postgresql_where=text("state = 'ready'"),
)

peaks = Table(
    "peaks",
    metadata,
    Column("track_id", Integer, primary_key=True, autoincrement=False),
    Column("time_frames", LargeBinary, nullable=False),  # uint32 LE, in 1/256 frames
    Column("freq_hz", LargeBinary, nullable=False),  # uint16 LE, in 0.1 Hz
)

# One row (id 1): `version` grows in every transaction that changes which tracks are visible
# (readers reload when it moves); `format` is the index content's format (catalog.FORMAT).
catalog_state = Table(
    "catalog_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
    Column("format", Integer, nullable=False),
)
