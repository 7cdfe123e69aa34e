"""How specific would a speed-invariant triplet hash be (Panako-style)?

`python -m bench.invariant_hash` hashes the reference corpus's triplets as the index does, and
as keys that no speed change alters: the two log-frequency steps and the ratio of the two
frame steps (quantised to 16, 32 or 64 levels), without the anchor's frequency (which pitch
and tempo together shift) and without the absolute frame steps (which any tempo change
scales); and, for key lock only, the same with the anchor's frequency kept. For each it prints
the postings a query hash would meet on average in an index of 1.72 billion postings (the
throughput bench's 100k-track index): N * sum over keys of p(key)^2, with the unbiased
estimate of sum p^2 from the corpus's counts, c(c-1) / (n(n-1)), so that the corpus's own
hashes do not count as collisions. Repeated music (loops) inflates every row alike.
"""

from __future__ import annotations

import numpy as np

from songscan.config import DEFAULT
from songscan.fingerprint import reference_peaks, triplet_keys
from songscan.media import decode_all

from .broadcast import AUDIO_SUFFIXES, find_corpus

INDEX_POSTINGS = 1.72e9


def postings_per_hash(keys: np.ndarray) -> float:
    _, counts = np.unique(keys, return_counts=True)
    n = float(counts.sum())
    return INDEX_POSTINGS * float((counts * (counts - 1.0)).sum()) / (n * (n - 1.0))


def main() -> int:
    fp = DEFAULT.fingerprint
    files = sorted(p for p in (find_corpus() / "reference").iterdir() if p.suffix in AUDIO_SUFFIXES)
    keys = np.concatenate(
        [
            triplet_keys(reference_peaks(decode_all(str(p), fp.sample_rate_hz), fp), fp, 4).hashes
            for p in files
        ]
    ).astype(np.int64)
    q1, dqs = keys >> 32, (keys >> 16) & 0xFFFF
    dt1, dt2 = (keys >> 8) & 0xFF, keys & 0xFF
    print(f"{keys.shape[0]} reference triplets of {len(files)} tracks")
    print(f"index key (q1, dq1, dq2, dt1, dt2): {postings_per_hash(keys):,.0f} postings per hash")
    for levels in (16, 32, 64):
        ratio = np.rint(levels * dt1 / dt2).astype(np.int64)
        invariant = (dqs << 16) | ratio
        print(
            f"speed-invariant (dq1, dq2, dt1/dt2 in {levels} levels): "
            f"{postings_per_hash(invariant):,.0f}; key-lock-invariant (with q1): "
            f"{postings_per_hash((q1 << 32) | invariant):,.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
