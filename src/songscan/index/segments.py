"""The embedded posting index: immutable sorted segments, memory-mapped, with a JSON manifest.

Layout of `DIR` (by default `DATA/index`):
    manifest.json              {"generation": n, "segments": [{"name": ..., "postings": n}, ...]}
    NAME.hashes.npy            uint32 hashes, sorted (not stored when the directory has one
                               bucket per hash value: it implies them)
    NAME.postings.npy          uint64 postings, in hash order
    NAME.directory.npy         (large segments only) where each bucket of hashes starts
                               (smaller ones get one in memory when opened)
    writer.lock                flock held by the one writer while it changes anything

Crash safety: a segment's files are written, fsynced and renamed into place before the manifest
that names them is atomically replaced (write, fsync, rename, fsync dir). A crash leaves either
the old or the new manifest; files no manifest names are removed by the next writer.
Readers re-read the manifest when its generation changes and keep the segments they mapped
(unlinked files stay readable while mapped), so they run while a writer adds or compacts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fingerprint import TRIPLET_BITS
from . import expand_runs, join_hits, run_positions, run_starts, unpack_postings

# Hashes are below 2^HASH_BITS. Every segment is read through a directory: where each bucket
# of hashes (the same top `bits` bits) starts, so that a lookup reads its bucket's few entries
# and keeps the equal ones (two array reads when a bucket is one hash value). Segments of at
# least DIRECTORY_MIN_POSTINGS postings store theirs beside them (4 bytes a bucket): one bucket
# per STORED_BUCKET_POSTINGS postings (half a byte a posting, against the posting's 12), and one
# per hash value once there are as many postings as hash values. That directory implies the
# hashes, so their file is left out: never more bytes than the hashes, and a lookup is two
# array reads. Smaller segments get one in memory when they are opened, one bucket per posting.
HASH_BITS = TRIPLET_BITS
DIRECTORY_MIN_POSTINGS = 1 << 24
STORED_BUCKET_POSTINGS = 8
_NPY_HEADER_LOCK = threading.Lock()
# Small segments are merged once there are more than this many.
MAX_SEGMENTS = 8
# In-memory directories have at most 2^20 buckets (4 MiB a segment, whatever the segment's
# size below DIRECTORY_MIN_POSTINGS: each process of a server holds them).
MEMORY_DIRECTORY_BITS = 20
# A lookup whose buckets hold more entries than this (a crowded mid-sized segment) binary
# searches instead of comparing every entry of its buckets.
MAX_BUCKET_ENTRIES = 1 << 20
# Merges write one range of hash values at a time, about this many postings each.
MERGE_PIECE_POSTINGS = 1 << 22


@dataclass
class _Segment:
    name: str
    hashes: np.ndarray | None  # None when the directory has one bucket per hash value
    postings: np.ndarray
    directory: np.ndarray  # start of each bucket's run (hash >> shift), and the end
    shift: int  # 0: one bucket per hash value

    def between(self, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        """The hashes and postings of the hash values in [low, high), read into memory."""
        if self.hashes is None:  # one bucket per hash value: the directory gives the hashes
            starts = np.asarray(self.directory[low : high + 1]).astype(np.int64)
            values = np.arange(low, high, dtype=np.uint32)
            return np.repeat(values, np.diff(starts)), np.asarray(
                self.postings[starts[0] : starts[-1]]
            )
        lo, hi = np.searchsorted(self.hashes, [low, high])
        return np.asarray(self.hashes[lo:hi]), np.asarray(self.postings[lo:hi])

    def find(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) of each query hash's run in this segment."""
        bucket = (queries >> self.shift).astype(np.intp)
        lo = self.directory[bucket].astype(np.int64)
        hi = self.directory[bucket + 1].astype(np.int64)
        if self.shift == 0:
            return lo, hi
        hashes = self.hashes
        assert hashes is not None  # only a directory of one bucket per hash value replaces them
        entries = hi - lo
        if int(entries.sum()) > MAX_BUCKET_ENTRIES:
            return (
                np.searchsorted(hashes, queries, side="left"),
                np.searchsorted(hashes, queries, side="right"),
            )
        # Every entry of each query's bucket; the equal ones are a run (the bucket is sorted).
        query, at = run_positions(lo, hi)
        equal = hashes[at] == queries[query]
        query, at = query[equal], at[equal]
        first = run_starts(query)
        lo = np.zeros(queries.shape[0], dtype=np.int64)
        lo[query[first]] = at[first]
        return lo, lo + np.bincount(query, minlength=queries.shape[0])


class SegmentIndex:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._manifest_path = self.dir / "manifest.json"
        self._generation = -1
        self._manifest_mtime: int | None = None
        self._segments: list[_Segment] = []
        self._refresh()

    # ---- reading ----------------------------------------------------------------------------
    def _read_manifest(self) -> dict:
        try:
            with self._manifest_path.open("rb") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return {"generation": 0, "segments": []}

    def _refresh(self) -> None:
        try:
            mtime = self._manifest_path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._manifest_mtime and self._generation >= 0:
            return
        for _attempt in range(5):
            manifest = self._read_manifest()
            if manifest["generation"] == self._generation:
                self._manifest_mtime = mtime
                return
            try:
                segments = [self._open_segment(s["name"]) for s in manifest["segments"]]
            except FileNotFoundError:
                continue  # compacted away between reading the manifest and opening: read again
            self._segments = segments
            self._generation = manifest["generation"]
            self._manifest_mtime = mtime
            return
        raise RuntimeError("the index manifest keeps changing; cannot open a consistent view")

    def _open_segment(self, name: str) -> _Segment:
        postings = _mapped(self.dir / f"{name}.postings.npy")
        directory_path = self.dir / f"{name}.directory.npy"
        if directory_path.exists():
            stored = _mapped(directory_path)
            shift = HASH_BITS - ((stored.shape[0] - 1).bit_length() - 1)
            if shift == 0:
                return _Segment(name, None, postings, stored, 0)
            return _Segment(name, _mapped(self.dir / f"{name}.hashes.npy"), postings, stored, shift)
        return _in_memory(_mapped(self.dir / f"{name}.hashes.npy"), postings, name)

    def lookup(
        self, hashes: np.ndarray, max_postings: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        self._refresh()
        hashes = np.asarray(hashes, dtype=np.uint32)
        order = np.arange(hashes.shape[0])
        runs = [(*segment.find(hashes), segment) for segment in self._segments]
        if max_postings is not None and runs:
            counts = sum(hi - lo for lo, hi, _ in runs)
            keep = _rarest_within(counts, max_postings)
            if not keep.all():
                order = order[keep]
                runs = [(lo[keep], hi[keep], segment) for lo, hi, segment in runs]
        return join_hits([expand_runs(order, lo, hi, segment.postings) for lo, hi, segment in runs])

    def every_posting(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (hash, posting) stored, in memory at once: for audits and tests of small
        indexes."""
        self._refresh()
        if not self._segments:
            return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.uint64)
        every = [s.between(0, 1 << HASH_BITS) for s in self._segments]
        return np.concatenate([h for h, _ in every]), np.concatenate([p for _, p in every])

    def posting_count(self) -> int:
        self._refresh()
        return int(sum(s.postings.shape[0] for s in self._segments))

    def segment_count(self) -> int:
        self._refresh()
        return len(self._segments)

    def size_bytes(self) -> int:
        self._refresh()
        total = 0
        for segment in self._segments:
            for kind in ("hashes", "postings", "directory"):
                path = self.dir / f"{segment.name}.{kind}.npy"
                with contextlib.suppress(FileNotFoundError):
                    total += path.stat().st_size
        return total

    def close(self) -> None:
        self._segments = []
        self._generation = -1

    # ---- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writer(self) -> Iterator[dict]:
        with (self.dir / "writer.lock").open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                manifest = self._read_manifest()
                self._remove_orphans(manifest)
                yield manifest
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, hashes: np.ndarray, postings: np.ndarray) -> None:
        batch = _sorted_batch(hashes, postings)
        if batch is None:
            return
        with self._writer() as manifest:
            name, count = self._write_segment([batch])
            manifest["segments"].append({"name": name, "postings": count})
            self._commit(manifest)
            if len(manifest["segments"]) > MAX_SEGMENTS:
                self._merge_smallest(manifest)
        self._refresh()

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace every posting with those of `batches` (hashes, postings), at once: readers
        see the old index until the new one is whole and committed, and a crash before that
        leaves the old one (the new files are removed by the next writer)."""
        with self._writer() as manifest:
            written: list[tuple[str, int]] = []
            for hashes, postings in batches:
                batch = _sorted_batch(hashes, postings)
                if batch is not None:
                    written.append(self._write_segment([batch]))
            if len(written) == 1:
                name, count = written[0]
            else:
                name, count = self._write_segment([self._open_segment(n) for n, _ in written])
            old = [s["name"] for s in manifest["segments"]]
            manifest["segments"] = [{"name": name, "postings": count}] if count else []
            self._commit(manifest)
            for gone in old + [n for n, _ in written if n != name]:
                self._unlink_segment(gone)
        self._refresh()

    def compact(self, live_tracks: np.ndarray | None) -> None:
        """Merge every segment into one; with `live_tracks`, drop other tracks' postings."""
        with self._writer() as manifest:
            if manifest["segments"]:
                self._merge(manifest, list(manifest["segments"]), live_tracks)
        self._refresh()

    def _merge_smallest(self, manifest: dict) -> None:
        by_size = sorted(manifest["segments"], key=lambda s: s["postings"])
        # Merge the smaller half: each posting is rewritten O(log n) times as the index grows.
        self._merge(manifest, by_size[: max(2, len(by_size) // 2 + 1)], live_tracks=None)

    def _merge(self, manifest: dict, chosen: list[dict], live_tracks: np.ndarray | None) -> None:
        parts = [self._open_segment(s["name"]) for s in chosen]
        name, count = self._write_segment(parts, live_tracks)
        names = {s["name"] for s in chosen}
        remaining = [s for s in manifest["segments"] if s["name"] not in names]
        if count:
            remaining.append({"name": name, "postings": count})
        manifest["segments"] = remaining
        self._commit(manifest)
        for name in names:
            self._unlink_segment(name)

    def _write_segment(
        self, parts: list[_Segment], live_tracks: np.ndarray | None = None
    ) -> tuple[str, int]:
        """Write the postings of `parts` (of `live_tracks` only, when given) as one new segment,
        durably; its name and size (no files when nothing is left).

        Streamed: one range of hash values at a time, each holding about MERGE_PIECE_POSTINGS
        postings, is read from every part, stably sorted (equal hashes keep the parts' order)
        and written at its place in memory-mapped files, so a merge's memory does not grow
        with the index. With `live_tracks` a first pass counts what is kept."""
        total = sum(int(p.postings.shape[0]) for p in parts)
        ranges = _hash_ranges(total)
        if live_tracks is not None:
            total = sum(
                int(_live(np.concatenate([p.between(*r)[1] for p in parts]), live_tracks).sum())
                for r in ranges
            )
        name = f"seg-{uuid.uuid4().hex[:12]}"
        if total == 0:
            return name, 0
        bits = stored_directory_bits(total) if total >= DIRECTORY_MIN_POSTINGS else None
        shapes: dict[str, tuple[type, int]] = {"postings": (np.uint64, total)}
        if bits != HASH_BITS:
            shapes["hashes"] = (np.uint32, total)
        if bits is not None:
            ranges = _hash_ranges(total, at_most=bits)
            shapes["directory"] = (np.uint32 if total < (1 << 32) else np.uint64, (1 << bits) + 1)
        tmp = {kind: self.dir / f"{name}.{kind}.npy.tmp" for kind in shapes}
        out = {
            kind: np.lib.format.open_memmap(tmp[kind], mode="w+", dtype=dtype, shape=(size,))
            for kind, (dtype, size) in shapes.items()
        }
        written = 0
        for low, high in ranges:
            read = [p.between(low, high) for p in parts]
            hashes = np.concatenate([h for h, _ in read])
            postings = np.concatenate([p for _, p in read])
            if live_tracks is not None:
                keep = _live(postings, live_tracks)
                hashes, postings = hashes[keep], postings[keep]
            order = np.argsort(hashes, kind="stable")
            hashes, postings = hashes[order], postings[order]
            end = written + hashes.shape[0]
            out["postings"][written:end] = postings
            if "hashes" in out:
                out["hashes"][written:end] = hashes
            if bits is not None:  # where each bucket of this range starts
                shift = HASH_BITS - bits
                first, last = low >> shift, high >> shift
                starts = np.searchsorted(hashes >> np.uint32(shift), np.arange(first, last))
                out["directory"][first:last] = written + starts
            written = end
        if bits is not None:
            out["directory"][-1] = written
        for array in out.values():
            array.flush()
        out.clear()  # unmapped
        for kind, path in tmp.items():
            _fsync(path)
            os.replace(path, self.dir / f"{name}.{kind}.npy")
        return name, written

    def _commit(self, manifest: dict) -> None:
        manifest["generation"] = int(manifest["generation"]) + 1
        tmp = self.dir / f"manifest.json.{uuid.uuid4().hex[:8]}.tmp"
        with tmp.open("w") as fh:
            json.dump(manifest, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._manifest_path)
        _fsync(self.dir)

    def _unlink_segment(self, name: str) -> None:
        for kind in ("hashes", "postings", "directory"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{name}.{kind}.npy").unlink()

    def _remove_orphans(self, manifest: dict) -> None:
        named = {s["name"] for s in manifest["segments"]}
        for path in self.dir.iterdir():
            stem = path.name.split(".", 1)[0]
            if path.name.endswith(".tmp") or (stem.startswith("seg-") and stem not in named):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _sorted_batch(hashes: np.ndarray, postings: np.ndarray) -> _Segment | None:
    """Postings to add, checked and sorted by hash (None when there are none)."""
    hashes = np.asarray(hashes, dtype=np.uint32)
    postings = np.asarray(postings, dtype=np.uint64)
    if hashes.shape != postings.shape:
        raise ValueError("hashes and postings differ in length")
    if hashes.shape[0] == 0:
        return None
    if int(hashes.max()) >> HASH_BITS:
        raise ValueError(f"hashes must be below 2^{HASH_BITS}")
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    # Only read by `between` (binary search): one bucket, no directory worth building.
    return _Segment("", sorted_hashes, postings[order], directory(sorted_hashes, 0), HASH_BITS)


def _in_memory(sorted_hashes: np.ndarray, postings: np.ndarray, name: str = "") -> _Segment:
    """A segment over arrays (memory or memory-mapped) without a stored directory."""
    bits = min(MEMORY_DIRECTORY_BITS, directory_bits(sorted_hashes.shape[0], per_bucket=1))
    return _Segment(name, sorted_hashes, postings, directory(sorted_hashes, bits), HASH_BITS - bits)


def _hash_ranges(postings: int, at_most: int = HASH_BITS) -> list[tuple[int, int]]:
    """Equal ranges of hash values, enough for MERGE_PIECE_POSTINGS postings a range on
    average (hashes are spread evenly by the fold), at most 2^`at_most` of them (so that a
    directory of that many buckets has whole buckets in each)."""
    bits = min(at_most, max(0, (-(-postings // MERGE_PIECE_POSTINGS) - 1).bit_length()))
    size = 1 << (HASH_BITS - bits)
    return [(i * size, (i + 1) * size) for i in range(1 << bits)]


def _live(postings: np.ndarray, live_tracks: np.ndarray) -> np.ndarray:
    tracks, _ = unpack_postings(postings)
    return np.isin(tracks, live_tracks)


def stored_directory_bits(postings: int) -> int:
    """The bits of a large segment's stored directory: one bucket per STORED_BUCKET_POSTINGS
    postings, or per hash value once there are as many postings as hash values (its hashes
    file is then left out)."""
    if postings >= 1 << HASH_BITS:
        return HASH_BITS
    return directory_bits(postings, STORED_BUCKET_POSTINGS)


def directory_bits(postings: int, per_bucket: int) -> int:
    """The bits of a directory with about `per_bucket` postings a bucket (a power of two), and
    at most one bucket per hash value."""
    return min(HASH_BITS, max(0, postings.bit_length() - per_bucket.bit_length()))


def directory(sorted_hashes: np.ndarray, bits: int) -> np.ndarray:
    """Where each bucket's run (hashes with the same top `bits` bits) starts in
    `sorted_hashes`, and where the last one ends: a binary search per bucket boundary, so no
    temporary the size of the hashes."""
    dtype = np.uint32 if sorted_hashes.shape[0] < (1 << 32) else np.uint64
    starts = np.zeros((1 << bits) + 1, dtype=dtype)
    # Hash values fit 32 bits (HASH_BITS < 32), and so does the end of the last bucket.
    ends = np.arange(1, (1 << bits) + 1, dtype=np.uint32) << np.uint32(HASH_BITS - bits)
    starts[1:] = np.searchsorted(sorted_hashes, ends)
    return starts


def _rarest_within(counts: np.ndarray, budget: int) -> np.ndarray:
    """Which queries to serve so that at most `budget` postings come back: the ones with the
    fewest postings first (a hash found everywhere says little about which song plays), ties
    in query order. Linear: by a histogram of the counts, not a sort."""
    if int(counts.sum()) <= budget:
        return np.ones(counts.shape[0], dtype=bool)
    postings_up_to = np.cumsum(np.bincount(counts) * np.arange(int(counts.max()) + 1))
    # Every query with at most `full` postings fits; of those with full + 1, the first few do.
    full = int(np.searchsorted(postings_up_to, budget, side="right")) - 1
    keep = counts <= full
    room = (budget - int(postings_up_to[full])) // (full + 1)
    next_ones = np.flatnonzero(counts == full + 1)[:room]
    keep[next_ones] = True
    return keep


def _mapped(path: Path) -> np.ndarray:
    """A .npy file memory-mapped read-only, as a plain array (indexing an np.memmap costs its
    subclass bookkeeping on every lookup; the view keeps the mapping alive)."""
    # np.load parses the .npy header with ast.literal_eval, which CPython 3.11 cannot run in
    # two threads at once (SystemError "AST constructor recursion depth mismatch").
    with _NPY_HEADER_LOCK:
        return np.load(path, mmap_mode="r").view(np.ndarray)


def _fsync(path: Path) -> None:
    """fsync a file or a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
