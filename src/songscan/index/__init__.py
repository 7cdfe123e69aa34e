"""The fingerprint index: hash -> postings (track id, anchor frame).

One narrow interface (`PostingIndex`) with one module per backend. The embedded default is
`segments.SegmentIndex` (sorted, memory-mapped numpy segments with a JSON manifest);
`rediscluster.RedisClusterIndex` shares one index on a Redis Cluster; `backends.open_index`
opens the one an index URL names. It holds
the reference tracks' triplet hashes, which find candidates; the candidates' pair hashes come
from the catalog's `References.pair_postings` (see matcher.py).

Visibility is decided by the catalog, not the index: postings of a track are written first and
the track becomes visible when its catalog row commits, so a crash at any point leaves every
track fully present or absent. Postings of tracks that are not live are filtered by the matcher
and dropped by compaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..config import FingerprintConfig
    from ..fingerprint import Peaks

TRACK_SHIFT = 32
FRAME_MASK = (1 << TRACK_SHIFT) - 1


def pack_postings(track_id: int | np.ndarray, frames: np.ndarray) -> np.ndarray:
    """A posting is a uint64: track id in the high 32 bits, anchor frame in the low 32."""
    return (np.asarray(track_id, dtype=np.uint64) << np.uint64(TRACK_SHIFT)) | np.asarray(
        frames, dtype=np.uint64
    )


def unpack_postings(postings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tracks = (postings >> np.uint64(TRACK_SHIFT)).astype(np.int64)
    frames = (postings & np.uint64(FRAME_MASK)).astype(np.int64)
    return tracks, frames


def expand_runs(
    order: np.ndarray, lo: np.ndarray, hi: np.ndarray, postings: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(query index, posting) for every posting in the runs postings[lo[i]:hi[i]] of the
    queries `order[i]`."""
    run, at = run_positions(lo, hi)
    return order[run], np.asarray(postings[at])


def run_positions(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every position in the runs [lo[i], hi[i]), and the run `i` it belongs to."""
    counts = hi - lo
    run = np.repeat(np.arange(counts.shape[0]), counts)
    return run, np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(run.shape[0])


def run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Indices where a run of equal values starts."""
    starts = np.ones(sorted_values.shape[0], dtype=bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    return np.flatnonzero(starts)


def join_hits(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The (query index, posting) pairs of several `expand_runs` calls, as one pair."""
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    return np.concatenate([q for q, _ in found]), np.concatenate([p for _, p in found])


class PostingIndex(Protocol):
    def add(self, hashes: np.ndarray, postings: np.ndarray) -> None:
        """Durably add postings (uint64, see pack_postings) under their hashes (uint32)."""

    def lookup(
        self, hashes: np.ndarray, max_postings: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each stored posting whose hash is in `hashes`: (index into `hashes`, posting).
        With `max_postings`, the most common hashes are left out so that at most that many
        postings come back (bounded work and memory per query whatever the index size)."""

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace every posting with those of `batches` (hashes, postings), at once: readers
        see the old index until the new one is whole."""

    def compact(self, live_tracks: np.ndarray) -> None:
        """Rewrite storage keeping only postings of `live_tracks` (sorted int64 ids)."""

    def size_bytes(self) -> int: ...

    def posting_count(self) -> int: ...

    def close(self) -> None: ...


class References(Protocol):
    """What the matcher reads: the triplet index, and the pair hashes of given tracks."""

    @property
    def index(self) -> PostingIndex: ...

    def pair_postings(
        self, track_ids: np.ndarray, hashes: np.ndarray, cfg: FingerprintConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each pair hash of the tracks `track_ids` that is in `hashes`: (index into
        `hashes`, posting): what a pair index would return for those tracks."""

    def peaks(self, track_id: int) -> Peaks:
        """A track's peaks (sorted by frame)."""
