"""Redis Cluster index figures against the segment files, in one run on one machine.

`python -m bench.cluster [--tracks N] [--postings-per-track P]` starts a 6-node Redis Cluster
on loopback (tests/servers.py), then on one synthetic index (random 28-bit hashes, N tracks of
P postings each):

1. ingest throughput into the cluster (`add`, one track a call, as the catalog ingests) for the
   first 200 tracks, then the rest by `rebuild` (the bulk path; buckets sized for the total);
2. Redis bytes per posting: growth of the masters' `used_memory` over the rebuild;
3. lookup time per chunk-sized query (20,000 hashes, half of them stored, the default posting
   budget), Redis ÷ segments, median of 20 each.

Other processes may share the machine: compare the ratio within one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tests.servers import start_redis_cluster

from songscan.config import DEFAULT
from songscan.index import pack_postings
from songscan.index.rediscluster import RedisClusterIndex
from songscan.index.segments import HASH_BITS, SegmentIndex

QUERY_HASHES = 20_000


def synthetic(tracks: int, per_track: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = tracks * per_track
    hashes = rng.integers(0, 1 << HASH_BITS, n).astype(np.uint32)
    track_ids = np.repeat(np.arange(1, tracks + 1), per_track)
    return hashes, pack_postings(track_ids, rng.integers(0, 20_000, n))


def median_time(fn: object, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=10_000)
    parser.add_argument("--postings-per-track", type=int, default=1000)
    args = parser.parse_args()
    hashes, postings = synthetic(args.tracks, args.postings_per_track)
    n, per = hashes.shape[0], args.postings_per_track
    cluster = start_redis_cluster()
    try:
        index = RedisClusterIndex(cluster.addresses, "bench", switch_grace_s=0)
        first = min(200, args.tracks)
        start = time.perf_counter()
        for t in range(first):
            index.add(hashes[t * per : (t + 1) * per], postings[t * per : (t + 1) * per])
        add_rate = first * per / (time.perf_counter() - start)

        def used_memory() -> int:
            info = index.redis.info("memory", target_nodes=index.redis.PRIMARIES)
            return sum(node["used_memory"] for node in info.values())

        before = used_memory()  # the replication backlogs are full by now (200 tracks written)
        start = time.perf_counter()
        step = 500_000
        batches = ((hashes[i : i + step], postings[i : i + step]) for i in range(0, n, step))
        index.rebuild(batches, n)
        rebuild_rate = n / (time.perf_counter() - start)
        per_posting = (used_memory() - before) / n
        with tempfile.TemporaryDirectory() as tmp:
            segments = SegmentIndex(Path(tmp))
            segments.rebuild(iter([(hashes, postings)]))
            rng = np.random.default_rng(2)
            queries = np.concatenate(
                [
                    rng.choice(hashes, QUERY_HASHES // 2),
                    rng.integers(0, 1 << HASH_BITS, QUERY_HASHES // 2).astype(np.uint32),
                ]
            )
            budget = DEFAULT.match.max_postings_per_lookup
            a, b = index.lookup(queries, budget), segments.lookup(queries, budget)
            assert sorted(zip(*map(np.ndarray.tolist, a), strict=True)) == sorted(
                zip(*map(np.ndarray.tolist, b), strict=True)
            ), "the backends disagree"
            redis_s = median_time(lambda: index.lookup(queries, budget))
            segments_s = median_time(lambda: segments.lookup(queries, budget))
        index.close()
    finally:
        cluster.stop()
    print(f"synthetic index: {args.tracks} tracks x {per} postings = {n} postings")
    print(f"ingest into the cluster: add {add_rate:,.0f} postings/s, rebuild {rebuild_rate:,.0f}/s")
    print(f"Redis used_memory: {per_posting:.2f} bytes a posting")
    print(
        f"lookup of {QUERY_HASHES} hashes: Redis {redis_s * 1000:.1f} ms, segments "
        f"{segments_s * 1000:.2f} ms, ratio {redis_s / segments_s:.1f}"
    )


if __name__ == "__main__":
    main()
