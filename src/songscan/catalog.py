"""Reference tracks: their metadata (SQLite) and their postings (the index), kept in step.

A track is visible when its row is `ready`. Ingest inserts `pending` rows, writes the postings,
then flips the rows to `ready` in one transaction (replacing any earlier track with the same
`audio_id`), so a crash at any point leaves each track fully present or absent: pending rows
and their postings are invisible, and the next writer deletes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import mutagen
import numpy as np

from .errors import InvalidParameters, NotFound
from .index import pack_postings
from .index.segments import SegmentIndex

METADATA_FIELDS = (
    "artist",
    "title",
    "album",
    "release_date",
    "label",
    "isrc",
    "upc",
    "song_link",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    owner         TEXT    NOT NULL DEFAULT '',
    audio_id      INTEGER NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'ready')),
    artist        TEXT, title TEXT, album TEXT, release_date TEXT, label TEXT,
    isrc          TEXT, upc TEXT, song_link TEXT,
    source        TEXT,
    duration_s    REAL    NOT NULL DEFAULT 0,
    hash_count    INTEGER NOT NULL DEFAULT 0,
    added_at      REAL    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS tracks_audio_id ON tracks (owner, audio_id)
    WHERE state = 'ready';
"""


@dataclass
class TrackMetadata:
    artist: str | None = None
    title: str | None = None
    album: str | None = None
    release_date: str | None = None
    label: str | None = None
    isrc: str | None = None
    upc: str | None = None
    song_link: str | None = None

    def merged(self, override: TrackMetadata) -> TrackMetadata:
        """These values, replaced by every value that `override` sets."""
        values = asdict(self)
        values.update({k: v for k, v in asdict(override).items() if v not in (None, "")})
        return TrackMetadata(**values)


@dataclass
class Track:
    id: int
    audio_id: int
    metadata: TrackMetadata
    duration_s: float
    hash_count: int
    owner: str = ""
    source: str | None = None
    added_at: float = field(default=0.0)


@dataclass
class FingerprintedTrack:
    """A reference track ready to be written: its hashes and their anchor frames."""

    metadata: TrackMetadata
    hashes: np.ndarray
    frames: np.ndarray
    duration_s: float
    audio_id: int | None = None
    owner: str = ""
    source: str | None = None


def metadata_from_tags(path: str | os.PathLike[str]) -> TrackMetadata:
    """Artist, title, album, ... from the file's tags; the file name when it has no title."""
    p = Path(path)
    found: dict[str, str] = {}
    try:
        tags = mutagen.File(str(p), easy=True)
    except Exception:  # mutagen raises many kinds on odd files; tags are optional anyway
        tags = None
    if tags is not None and tags.tags is not None:
        aliases = {
            "artist": ("artist", "albumartist"),
            "title": ("title",),
            "album": ("album",),
            "release_date": ("date", "originaldate"),
            "label": ("organization", "label", "publisher"),
            "isrc": ("isrc",),
            "upc": ("barcode", "upc"),
            "song_link": ("website",),
        }
        for name, keys in aliases.items():
            for key in keys:
                try:
                    value = tags.get(key)
                except (KeyError, ValueError):
                    value = None
                if value:
                    found[name] = str(value[0] if isinstance(value, list) else value).strip()
                    break
    found.setdefault("title", p.stem.replace("_", " "))
    return TrackMetadata(**found)


class Catalog:
    """The reference catalog in a data directory: `catalog.sqlite` plus `index/`."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = SegmentIndex(self.data_dir / "index")
        self._db_path = self.data_dir / "catalog.sqlite"
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(_SCHEMA)
        self._live_version: tuple[int, int] | None = None
        self._live_ids = np.zeros(0, dtype=np.int64)
        self._tracks: dict[int, Track] = {}
        self._lock = threading.Lock()

    # ---- connections ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._db_path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.row_factory = sqlite3.Row
        return db

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    # ---- reading ----------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Reload the live tracks when another connection has committed since last time."""
        db = self._db
        version = (id(db), db.execute("PRAGMA data_version").fetchone()[0])
        if version == self._live_version:
            return
        rows = db.execute("SELECT * FROM tracks WHERE state = 'ready' ORDER BY id").fetchall()
        tracks = {row["id"]: _track(row) for row in rows}
        with self._lock:
            self._tracks = tracks
            self._live_ids = np.fromiter(tracks.keys(), dtype=np.int64, count=len(tracks))
            self._live_version = version

    def _changed(self) -> None:
        # data_version only moves for other connections' commits: reload after our own.
        self._live_version = None
        self._refresh()

    def live_ids(self, owners: tuple[str, ...] | None = None) -> np.ndarray:
        """Sorted ids of the visible tracks; with `owners`, only tracks of those owners
        ("" is the shared catalog, an account's id its own uploads)."""
        self._refresh()
        if owners is None:
            return self._live_ids
        wanted = set(owners)
        return np.fromiter(
            (i for i, t in self._tracks.items() if t.owner in wanted), dtype=np.int64
        )

    def track(self, track_id: int) -> Track:
        self._refresh()
        return self._tracks[track_id]

    def tracks(self, owner: str | None = "") -> list[Track]:
        self._refresh()
        return [t for t in self._tracks.values() if owner is None or t.owner == owner]

    def get(self, audio_id: int, owner: str = "") -> Track:
        for t in self.tracks(owner):
            if t.audio_id == audio_id:
                return t
        raise NotFound(f"no track with audio_id {audio_id}")

    def stats(self) -> dict[str, Any]:
        tracks = self.tracks(owner=None)
        hours = sum(t.duration_s for t in tracks) / 3600.0
        size = self.index.size_bytes()
        return {
            "tracks": len(tracks),
            "hours": round(hours, 3),
            "postings": self.index.posting_count(),
            "segments": self.index.segment_count(),
            "index_bytes": size,
            "index_bytes_per_hour": round(size / hours) if hours else 0,
        }

    # ---- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time across processes (readers never wait)."""
        with (self.data_dir / "catalog.lock").open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def next_audio_id(self, owner: str = "") -> int:
        row = self._db.execute(
            "SELECT COALESCE(MAX(audio_id), 0) + 1 FROM tracks WHERE owner = ?", (owner,)
        ).fetchone()
        return int(row[0])

    def add(self, batch: Sequence[FingerprintedTrack]) -> list[Track]:
        """Write a batch of fingerprinted tracks; each replaces any track with its audio_id."""
        if not batch:
            return []
        with self._writing():
            return self._add(batch)

    def _add(self, batch: Sequence[FingerprintedTrack]) -> list[Track]:
        db = self._db
        self._clean_pending()
        now = time.time()
        ids: list[int] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            next_ids: dict[str, int] = {}
            for item in batch:
                if item.audio_id is None:
                    if item.owner not in next_ids:
                        next_ids[item.owner] = self.next_audio_id(item.owner)
                    item.audio_id = next_ids[item.owner]
                    next_ids[item.owner] += 1
                elif item.audio_id < 0:
                    raise InvalidParameters("audio_id must be a non-negative integer")
                cur = db.execute(
                    "INSERT INTO tracks (owner, audio_id, state, source, duration_s, hash_count,"
                    " added_at, " + ", ".join(METADATA_FIELDS) + ") VALUES (?, ?, 'pending', ?,"
                    " ?, ?, ?, " + ", ".join("?" * len(METADATA_FIELDS)) + ")",
                    (
                        item.owner,
                        item.audio_id,
                        item.source,
                        item.duration_s,
                        int(item.hashes.shape[0]),
                        now,
                        *(getattr(item.metadata, f) for f in METADATA_FIELDS),
                    ),
                )
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        hashes = np.concatenate([item.hashes for item in batch])
        postings = np.concatenate(
            [pack_postings(i, item.frames) for i, item in zip(ids, batch, strict=True)]
        )
        self.index.add(hashes, postings)
        db.execute("BEGIN IMMEDIATE")
        try:
            for track_id, item in zip(ids, batch, strict=True):
                db.execute(
                    "DELETE FROM tracks WHERE owner = ? AND audio_id = ? AND state = 'ready'",
                    (item.owner, item.audio_id),
                )
                db.execute("UPDATE tracks SET state = 'ready' WHERE id = ?", (track_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._changed()
        return [self._tracks[i] for i in ids]

    def _clean_pending(self) -> None:
        """Forget tracks whose ingest never finished (their postings stay invisible)."""
        self._db.execute("DELETE FROM tracks WHERE state = 'pending'")

    def remove(self, audio_id: int, owner: str = "") -> Track:
        track = self.get(audio_id, owner)
        with self._writing():
            self._db.execute("DELETE FROM tracks WHERE id = ?", (track.id,))
        self._changed()
        return track

    def compact(self) -> None:
        """Drop postings of removed, replaced or never-finished tracks from the index."""
        with self._writing():
            self._clean_pending()
            self.index.compact(self.live_ids())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        self.index.close()


def _track(row: sqlite3.Row) -> Track:
    return Track(
        id=row["id"],
        audio_id=row["audio_id"],
        metadata=TrackMetadata(**{f: row[f] for f in METADATA_FIELDS}),
        duration_s=row["duration_s"],
        hash_count=row["hash_count"],
        owner=row["owner"],
        source=row["source"],
        added_at=row["added_at"],
    )


def metadata_from_mapping(values: Mapping[str, Any]) -> TrackMetadata:
    names = {f.name for f in fields(TrackMetadata)}
    return TrackMetadata(
        **{k: (str(v) if v is not None else None) for k, v in values.items() if k in names}
    )


def iter_audio_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files named, and files under folders named (recursively, sorted), skipping hidden ones."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                hidden = any(part.startswith(".") for part in child.relative_to(p).parts)
                if child.is_file() and not hidden:
                    yield child
        else:
            yield p
