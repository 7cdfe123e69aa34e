"""The fingerprint index: hash -> postings (track id, anchor frame).

One narrow interface (`PostingIndex`) with one module per backend. The embedded default is
`segments.SegmentIndex` (sorted, memory-mapped numpy segments with a SQLite manifest).

Visibility is decided by the catalog, not the index: postings of a track are written first and
the track becomes visible when its catalog row commits, so a crash at any point leaves every
track fully present or absent. Postings of tracks that are not live are filtered by the matcher
and dropped by compaction.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

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


class PostingIndex(Protocol):
    def add(self, hashes: np.ndarray, postings: np.ndarray) -> None:
        """Durably add postings (uint64, see pack_postings) under their hashes (uint32)."""

    def lookup(
        self, hashes: np.ndarray, max_postings: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each stored posting whose hash is in `hashes`: (index into `hashes`, posting).
        With `max_postings`, the most common hashes are left out so that at most that many
        postings come back (bounded work and memory per query whatever the index size)."""

    def compact(self, live_tracks: np.ndarray) -> None:
        """Rewrite storage keeping only postings of `live_tracks` (sorted int64 ids)."""

    def size_bytes(self) -> int: ...

    def posting_count(self) -> int: ...

    def close(self) -> None: ...
