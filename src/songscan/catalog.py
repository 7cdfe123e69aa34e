"""Reference tracks: their metadata and peaks (the catalog database: SQLite in the data
directory, or PostgreSQL; see `catalogdb`) and their postings (the index), kept in step.

The index holds each track's triplet hashes (they find candidates in a large catalog); the
`peaks` table holds each track's spectral peaks, from which `pair_postings` derives the pair
hashes that verify a candidate (computed on demand, a few recent tracks cached per process).

A track is visible when its row is `ready`. Ingest inserts `pending` rows, writes the postings,
then flips the rows to `ready` in one transaction (replacing any earlier track with the same
`audio_id`), so a crash at any point leaves each track fully present or absent: pending rows
and their postings are invisible, and the next writer deletes them. Every transaction that
changes which tracks are visible bumps `catalog_state.version`; readers reload when it moves.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import mutagen
import numpy as np

from .catalogdb import Row, Store, Transaction, sqlite_url
from .config import FingerprintConfig
from .errors import InvalidParameters, NotFound, SongscanError
from .fingerprint import Hashes, Peaks, reference_pairs, reference_triplets
from .index import expand_runs, join_hits, pack_postings
from .index.segments import SegmentIndex
from .settings import unusable_data_dir

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

# The data directory's format (catalog_state.format): bumped when the index's content changes.
FORMAT = 3
# Formats whose index `reindex` rebuilds from the stored peaks (format 1 kept no peaks).
REINDEXABLE = (2,)
# Tracks fingerprinted per index batch when reindexing.
REINDEX_BATCH_TRACKS = 500
# Tracks copied per transaction by `copy_to` (their peaks are in memory meanwhile).
COPY_BATCH_TRACKS = 200
# Tracks whose pair postings each process keeps (a scan hears the same songs chunk after chunk).
PAIR_CACHE_TRACKS = 64


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
    """A reference track ready to be written: its triplet hashes with their anchor frames,
    and its peaks."""

    metadata: TrackMetadata
    hashes: np.ndarray
    frames: np.ndarray
    duration_s: float
    peaks: Peaks
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

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        upgrade: bool = False,
        database_url: str | None = None,
    ) -> None:
        """`upgrade`: open a data directory of an older format that `reindex` can rebuild,
        for that alone. `database_url`: the catalog's database (SQLite in the data directory
        when None)."""
        self.data_dir = Path(data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.index = SegmentIndex(self.data_dir / "index")
        except OSError as exc:
            raise unusable_data_dir(self.data_dir, exc) from None
        self._store = Store(database_url or sqlite_url(self.data_dir), self.data_dir)
        _check_format(self._store, upgrade)
        self._live_version: int | None = None
        self._live_ids = np.zeros(0, dtype=np.int64)
        self._tracks: dict[int, Track] = {}
        self._lock = threading.Lock()
        self._pairs: OrderedDict[tuple[int, FingerprintConfig], tuple[np.ndarray, ...]] = (
            OrderedDict()
        )

    # ---- reading ----------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Reload the live tracks when another connection has committed since last time."""
        version = int(self._store.value("SELECT version FROM catalog_state WHERE id = 1"))
        if version == self._live_version:
            return
        rows = self._store.rows("SELECT * FROM tracks WHERE state = 'ready' ORDER BY id")
        tracks = {row["id"]: _track(row) for row in rows}
        with self._lock:
            self._tracks = tracks
            self._live_ids = np.fromiter(tracks.keys(), dtype=np.int64, count=len(tracks))
            self._live_version = version

    def _changed(self) -> None:
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
        """The track `audio_id` of `owner`: a track is named by both ("" is the shared
        catalog, an account's id its uploads; each numbers its tracks from 1)."""
        for t in self.tracks(owner):
            if t.audio_id == audio_id:
                return t
        where = f"account {owner}'s uploads" if owner else "the shared catalog"
        raise NotFound(f"no track with audio_id {audio_id} in {where}")

    def pair_postings(
        self, track_ids: np.ndarray, hashes: np.ndarray, cfg: FingerprintConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        """(index into `hashes`, posting) for each pair hash of `track_ids` found in `hashes`."""
        order = np.argsort(hashes)
        sorted_queries = hashes[order]
        self._cache_pairs([int(t) for t in track_ids], cfg)
        found = []
        for track_id in track_ids:
            distinct, starts, ref_postings = self._track_pairs(int(track_id), cfg)
            if distinct.shape[0] == 0:
                continue
            pos = np.minimum(np.searchsorted(distinct, sorted_queries), distinct.shape[0] - 1)
            hit = distinct[pos] == sorted_queries
            lo, hi = np.where(hit, starts[pos], 0), np.where(hit, starts[pos + 1], 0)
            found.append(expand_runs(order, lo, hi, ref_postings))
        return join_hits(found)

    def _cache_pairs(self, track_ids: list[int], cfg: FingerprintConfig) -> None:
        """Derive the pairs of the tracks not in the cache, their peaks fetched in one query."""
        with self._lock:
            missing = [t for t in track_ids if (t, cfg) not in self._pairs]
        if missing and len(missing) <= PAIR_CACHE_TRACKS:
            for track_id, peaks in self.peaks_of(missing).items():
                self._track_pairs(track_id, cfg, peaks)

    def _track_pairs(
        self, track_id: int, cfg: FingerprintConfig, peaks: Peaks | None = None
    ) -> tuple[np.ndarray, ...]:
        """A track's pair hashes from its stored peaks: the distinct hashes (sorted), where
        each one's run starts in the postings (and where the last ends), the postings."""
        key = (track_id, cfg)
        with self._lock:
            if key in self._pairs:
                self._pairs.move_to_end(key)
                return self._pairs[key]
        found = reference_pairs(self.peaks(track_id) if peaks is None else peaks, cfg)
        order = np.argsort(found.hashes)
        sorted_hashes = found.hashes[order]
        frames = np.rint(found.anchor_frames[order]).astype(np.uint32)
        distinct, starts = np.unique(sorted_hashes, return_index=True)
        starts = np.append(starts, sorted_hashes.shape[0])
        pairs = (distinct, starts, pack_postings(track_id, frames))
        with self._lock:
            self._pairs[key] = pairs
            while len(self._pairs) > PAIR_CACHE_TRACKS:
                self._pairs.popitem(last=False)
        return pairs

    def peaks(self, track_id: int) -> Peaks:
        """A track's stored peaks (none for a track without them)."""
        return self.peaks_of([track_id]).get(track_id) or _unpack_peaks(b"", b"")

    def peaks_of(self, track_ids: Sequence[int]) -> dict[int, Peaks]:
        """The stored peaks of these tracks, in one query (tracks without peaks are absent)."""
        if not track_ids:
            return {}
        rows = self._store.rows(
            "SELECT track_id, time_frames, freq_hz FROM peaks WHERE track_id IN ("
            + ", ".join("?" * len(track_ids))
            + ")",
            [int(t) for t in track_ids],
        )
        return {
            int(row["track_id"]): _unpack_peaks(row["time_frames"], row["freq_hz"]) for row in rows
        }

    def stats(self) -> dict[str, Any]:
        tracks = self.tracks(owner=None)
        hours = sum(t.duration_s for t in tracks) / 3600.0
        postings_bytes = self.index.size_bytes()
        peaks_bytes = int(
            self._store.value(
                "SELECT COALESCE(SUM(LENGTH(time_frames) + LENGTH(freq_hz)), 0) FROM peaks"
            )
        )
        size = postings_bytes + peaks_bytes
        return {
            "tracks": len(tracks),
            "hours": round(hours, 3),
            "postings": self.index.posting_count(),
            "segments": self.index.segment_count(),
            "index_bytes": size,
            "postings_bytes": postings_bytes,
            "peaks_bytes": peaks_bytes,
            "index_bytes_per_hour": round(size / hours) if hours else 0,
        }

    # ---- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time across processes (readers never wait)."""
        with self._store.writer():
            yield

    def next_audio_id(self, owner: str = "") -> int:
        return int(
            self._store.value(
                "SELECT COALESCE(MAX(audio_id), 0) + 1 AS next FROM tracks WHERE owner = ?",
                (owner,),
            )
        )

    def add(self, batch: Sequence[FingerprintedTrack]) -> list[Track]:
        """Write a batch of fingerprinted tracks; each replaces any track with its audio_id."""
        if not batch:
            return []
        with self._writing():
            return self._add(batch)

    def _add(self, batch: Sequence[FingerprintedTrack]) -> list[Track]:
        now = time.time()
        ids: list[int] = []
        with self._store.transaction() as tx:
            _clean_pending(tx)
            next_ids: dict[str, int] = {}
            for item in batch:
                if item.audio_id is None:
                    if item.owner not in next_ids:
                        next_ids[item.owner] = self.next_audio_id(item.owner)
                    item.audio_id = next_ids[item.owner]
                    next_ids[item.owner] += 1
                elif item.audio_id < 0:
                    raise InvalidParameters("audio_id must be a non-negative integer")
                (row,) = tx.execute(
                    "INSERT INTO tracks (owner, audio_id, state, source, duration_s, hash_count,"
                    " added_at, " + ", ".join(METADATA_FIELDS) + ") VALUES (?, ?, 'pending', ?,"
                    " ?, ?, ?, " + ", ".join("?" * len(METADATA_FIELDS)) + ") RETURNING id",
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
                ids.append(int(row["id"]))
                tx.execute(
                    "INSERT INTO peaks (track_id, time_frames, freq_hz) VALUES (?, ?, ?)",
                    (ids[-1], *_pack_peaks(item.peaks)),
                )
        hashes = np.concatenate([item.hashes for item in batch])
        postings = np.concatenate(
            [pack_postings(i, item.frames) for i, item in zip(ids, batch, strict=True)]
        )
        self.index.add(hashes, postings)
        with self._store.transaction() as tx:
            for track_id, item in zip(ids, batch, strict=True):
                replaced = (
                    "SELECT id FROM tracks WHERE owner = ? AND audio_id = ? AND state = 'ready'"
                )
                tx.execute(
                    f"DELETE FROM peaks WHERE track_id IN ({replaced})", (item.owner, item.audio_id)
                )
                tx.execute(
                    "DELETE FROM tracks WHERE owner = ? AND audio_id = ? AND state = 'ready'",
                    (item.owner, item.audio_id),
                )
                tx.execute("UPDATE tracks SET state = 'ready' WHERE id = ?", (track_id,))
            _bump_version(tx)
        self._changed()
        return [self._tracks[i] for i in ids]

    def remove(self, audio_id: int, owner: str = "") -> Track:
        track = self.get(audio_id, owner)
        with self._writing(), self._store.transaction() as tx:
            tx.execute("DELETE FROM peaks WHERE track_id = ?", (track.id,))
            tx.execute("DELETE FROM tracks WHERE id = ?", (track.id,))
            _bump_version(tx)
        self._changed()
        return track

    def reindex(self, cfg: FingerprintConfig, on_track: Callable[[], None] | None = None) -> None:
        """Rebuild the triplet index from the stored peaks, as ingest would have built it (no
        audio needed: after an upgrade that changed the hashes), and stamp the data directory
        with FORMAT. Readers keep the old index until the new one is whole."""
        counts: dict[int, int] = {}

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            ids = self.live_ids()
            for lo in range(0, ids.shape[0], REINDEX_BATCH_TRACKS):
                found = []
                for track_id in ids[lo : lo + REINDEX_BATCH_TRACKS].tolist():
                    triplets = reference_triplets(self.peaks(track_id), cfg)
                    counts[track_id] = len(triplets)
                    found.append((triplets.hashes, track_postings(track_id, triplets)))
                    if on_track is not None:
                        on_track()
                yield np.concatenate([h for h, _ in found]), np.concatenate([p for _, p in found])

        with self._writing():
            with self._store.transaction() as tx:
                _clean_pending(tx)
            self.index.rebuild(batches())
            with self._store.transaction() as tx:
                tx.executemany(
                    "UPDATE tracks SET hash_count = ? WHERE id = ?",
                    [(n, track_id) for track_id, n in counts.items()],
                )
                tx.execute("UPDATE catalog_state SET format = ? WHERE id = 1", (FORMAT,))
                _bump_version(tx)
        self._changed()

    def copy_to(self, database_url: str, on_track: Callable[[], None] | None = None) -> int:
        """Copy this catalog's tracks (their rows and peaks, ids kept: the index's postings
        name them) into the empty catalog of `database_url`, for a data directory moving
        onto PostgreSQL; returns how many. The index stays where it is."""
        target = Catalog(self.data_dir, database_url=database_url)
        try:
            with self._writing(), target._writing():
                if target._store.row("SELECT 1 AS one FROM tracks LIMIT 1") is not None:
                    raise InvalidParameters("that database already holds a catalog")
                ids = self.live_ids().tolist()
                columns = (
                    "id",
                    "owner",
                    "audio_id",
                    "state",
                    *METADATA_FIELDS,
                    "source",
                    "duration_s",
                    "hash_count",
                    "added_at",
                )
                insert_track = (
                    f"INSERT INTO tracks ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})"
                )
                for lo in range(0, len(ids), COPY_BATCH_TRACKS):
                    batch = ids[lo : lo + COPY_BATCH_TRACKS]
                    marks = ", ".join("?" * len(batch))
                    rows = self._store.rows(f"SELECT * FROM tracks WHERE id IN ({marks})", batch)
                    peaks = self._store.rows(
                        f"SELECT * FROM peaks WHERE track_id IN ({marks})", batch
                    )
                    with target._store.transaction() as tx:
                        tx.executemany(insert_track, [[r[c] for c in columns] for r in rows])
                        tx.executemany(
                            "INSERT INTO peaks (track_id, time_frames, freq_hz) VALUES (?, ?, ?)",
                            [(p["track_id"], p["time_frames"], p["freq_hz"]) for p in peaks],
                        )
                    for _ in batch:
                        if on_track is not None:
                            on_track()
                fmt = self._store.value("SELECT format FROM catalog_state WHERE id = 1")
                with target._store.transaction() as tx:
                    tx.execute("UPDATE catalog_state SET format = ? WHERE id = 1", (fmt,))
                    _bump_version(tx)
                    if target._store.dialect == "postgresql":  # ids go on after the copied ones
                        tx.execute(
                            "SELECT setval(pg_get_serial_sequence('tracks', 'id'),"
                            " (SELECT COALESCE(MAX(id), 0) + 1 FROM tracks), false)"
                        )
        finally:
            target.close()
        return len(ids)

    def compact(self) -> None:
        """Drop postings of removed, replaced or never-finished tracks from the index."""
        with self._writing():
            with self._store.transaction() as tx:
                _clean_pending(tx)
            self.index.compact(self.live_ids())

    def close(self) -> None:
        self._store.close()
        self.index.close()


def _clean_pending(tx: Transaction) -> None:
    """Forget tracks whose ingest never finished (their postings stay invisible): the caller
    is the one writer, so no pending row is another's work in progress."""
    tx.execute(
        "DELETE FROM peaks WHERE track_id IN (SELECT id FROM tracks WHERE state = 'pending')"
    )
    tx.execute("DELETE FROM tracks WHERE state = 'pending'")


def _bump_version(tx: Transaction) -> None:
    tx.execute("UPDATE catalog_state SET version = version + 1 WHERE id = 1")


def stored(peaks: Peaks) -> Peaks:
    """Peaks at the precision the catalog keeps them: every reference hash (pairs, and the
    index's triplets) is derived from these, so the index can be rebuilt from the catalog."""
    return _unpack_peaks(*_pack_peaks(peaks))


def posting_frames(triplets: Hashes) -> np.ndarray:
    """The frames the index keeps for a track's triplets (their anchors')."""
    return triplets.anchor_frames.round().astype(np.uint32)


def track_postings(track_id: int, triplets: Hashes) -> np.ndarray:
    """The index postings of a track's triplets."""
    return pack_postings(track_id, posting_frames(triplets))


def _pack_peaks(peaks: Peaks) -> tuple[bytes, bytes]:
    """Peaks in 6 bytes each: frame to 1/256, frequency to 0.1 Hz (far finer than the hashes'
    quantisation; every pair hash of a reference is derived from these stored values)."""
    time_frames = np.rint(np.maximum(peaks.time_frames, 0) * 256).astype("<u4")
    freq = np.rint(np.clip(peaks.freq_hz, 0, 6553.5) * 10).astype("<u2")
    return time_frames.tobytes(), freq.tobytes()


def _unpack_peaks(time_frames: bytes, freq: bytes) -> Peaks:
    t = (np.frombuffer(time_frames, dtype="<u4") / 256).astype(np.float32)
    f = (np.frombuffer(freq, dtype="<u2") / 10).astype(np.float32)
    return Peaks(time_frames=t, freq_hz=f, strength=np.zeros_like(t))


def _check_format(store: Store, upgrade: bool) -> None:
    """Stamp a new data directory with FORMAT; refuse one written in another format (but one
    that `reindex` can rebuild, when opened to `upgrade` it)."""
    version = int(store.value("SELECT format FROM catalog_state WHERE id = 1"))
    if version == FORMAT:
        return
    if store.row("SELECT 1 AS one FROM tracks LIMIT 1") is None:
        with store.transaction() as tx:
            tx.execute("UPDATE catalog_state SET format = ? WHERE id = 1", (FORMAT,))
        return
    if version in REINDEXABLE:
        if upgrade:
            return
        how = "run `songscan catalog reindex` (it rebuilds the index from the stored peaks)"
    else:
        how = "add the reference tracks again into a new data directory"
    raise SongscanError(
        f"the data directory holds an index of format {version}; this songscan reads "
        f"format {FORMAT}: {how}"
    )


def _track(row: Row) -> Track:
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
