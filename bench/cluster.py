"""Redis Cluster index figures against the segment files, in one run on one machine.

`python -m bench.cluster [--tracks N] [--postings-per-track P] [--hours H]` starts a 6-node
Redis Cluster on loopback (tests/servers.py), then:

1. the corpus's reference tracks ingested into two data dirs, one with the embedded segment
   files and one with its index on the cluster (ingest throughput into the cluster), and an
   H-hour programme (bench/broadcast.py) scanned through each with 2 local pool workers, in
   alternating rounds (the best of each counts; the results must be equal): scan speed through
   the cluster ÷ embedded, the Redis nodes' CPU, network bytes and script calls per chunk.
   (Scans on Celery workers are measured by `bench/workers.py`: their pool ÷ workers ratio
   over the same shared catalog and index.)
2. one synthetic index (random 28-bit hashes, N tracks of P postings each): ingest throughput
   by `add` (one track a call) for the first 200 tracks and by `rebuild` for the rest; Redis
   bytes per posting (growth of the masters' `used_memory` over the rebuild); lookup time per
   chunk-sized query (20,000 hashes, half of them stored, the default posting budget), Redis ÷
   segments, median of 20 each, and the Redis CPU per queried hash;
3. a capacity model for a 1M-track catalog scanning 10,000 hours a day, from those figures.

Other processes may share the machine: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from redis.cluster import RedisCluster as Client
from tests.servers import RedisCluster, start_redis_cluster

from bench import broadcast
from songscan.allocator import tune_allocator
from songscan.catalog import Catalog, iter_audio_files
from songscan.chunks import PlanParams
from songscan.config import DEFAULT, EngineConfig
from songscan.index import pack_postings
from songscan.index.rediscluster import RedisClusterIndex
from songscan.index.segments import HASH_BITS, SegmentIndex
from songscan.ingest import IngestItem, ingest
from songscan.scan import ScanResult, scan_file, shutdown_pools

QUERY_HASHES = 20_000
OUT = Path(__file__).parent / "out"
# The capacity model's deployment.
MODEL_TRACKS = 1_000_000
MODEL_HOURS_A_DAY = 10_000


def synthetic(tracks: int, per_track: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = tracks * per_track
    hashes = rng.integers(0, 1 << HASH_BITS, n).astype(np.uint32)
    track_ids = np.repeat(np.arange(1, tracks + 1), per_track)
    return hashes, pack_postings(track_ids, rng.integers(0, 20_000, n))


def median_time(fn: Callable[[], object], repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def server_counters(client: Client) -> dict[str, float]:
    """Summed over every node: CPU seconds, network bytes in and out, EVALSHA calls and their
    server time (µs)."""
    total = dict.fromkeys(("cpu_s", "net_in", "net_out", "evalsha", "evalsha_us"), 0.0)
    nodes = Client.ALL_NODES
    for cpu in client.info("cpu", target_nodes=nodes).values():
        total["cpu_s"] += cpu["used_cpu_user"] + cpu["used_cpu_sys"]
    for stats in client.info("stats", target_nodes=nodes).values():
        total["net_in"] += stats["total_net_input_bytes"]
        total["net_out"] += stats["total_net_output_bytes"]
    for commands in client.info("commandstats", target_nodes=nodes).values():
        evalsha = commands.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        total["evalsha"] += evalsha["calls"]
        total["evalsha_us"] += evalsha["usec"]
    return total


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def scan_comparison(cluster: RedisCluster, hours: float, rounds: int) -> dict[str, Any]:
    corpus = broadcast.find_corpus()
    items = [IngestItem(f) for f in iter_audio_files([corpus / "reference"])]
    embedded_dir, cluster_dir = OUT / "cluster-embedded", OUT / "cluster-redis"
    for d in (embedded_dir, cluster_dir):
        shutil.rmtree(d, ignore_errors=True)
    on_cluster = dataclasses.replace(DEFAULT, index_url=f"{cluster.url}?prefix=scan")
    catalog = Catalog(embedded_dir)
    ingest(catalog, items, DEFAULT, workers=0)
    catalog.close()
    catalog = Catalog(cluster_dir, index_url=on_cluster.index_url)
    start = time.perf_counter()
    outcomes = ingest(catalog, items, on_cluster, workers=0)
    ingest_s = time.perf_counter() - start
    postings, tracks = catalog.index.posting_count(), len(outcomes)
    catalog.close()
    long = broadcast.build_long_mp3(corpus, OUT, hours=hours, seed=1)
    warm_up = PlanParams(limit=2 * DEFAULT.scan.max_chunks_per_unit)
    client = Client(host="127.0.0.1", port=cluster.addresses[0][1])

    def scan(data_dir: Path, cfg: EngineConfig) -> tuple[float, ScanResult]:
        start = time.perf_counter()
        result = scan_file(long.path, data_dir, PlanParams(), cfg)
        return time.perf_counter() - start, result

    scan_file(long.path, embedded_dir, warm_up, DEFAULT)
    scan_file(long.path, cluster_dir, warm_up, on_cluster)
    embedded_runs, cluster_runs, per_round = [], [], []
    for _ in range(rounds):
        embedded_s, embedded = scan(embedded_dir, DEFAULT)
        before = server_counters(client)
        cluster_s, through = scan(cluster_dir, on_cluster)
        per_round.append(delta(server_counters(client), before))
        assert found_songs(through) == found_songs(embedded), (
            "the cluster's scan differs from embedded"
        )
        embedded_runs.append(embedded_s)
        cluster_runs.append(cluster_s)
    shutdown_pools()
    client.close()
    chunks = len(embedded.chunks)
    hashes, lookups = looked_up(long.path, embedded_dir)
    best = per_round[int(np.argmin(cluster_runs))]
    return {
        "tracks": tracks,
        "postings": postings,
        "ingest_postings_per_s": postings / ingest_s,
        "ingest_x_rt": sum(o.audio_s for o in outcomes) / ingest_s,
        "chunks": chunks,
        "audio_s": embedded.duration_s,
        "embedded_s": min(embedded_runs),
        "cluster_s": min(cluster_runs),
        "embedded_runs": embedded_runs,
        "cluster_runs": cluster_runs,
        "per_chunk": {k: v / chunks for k, v in best.items()},
        "hashes_per_chunk": hashes / chunks,
        "lookups_per_chunk": lookups / chunks,
    }


def looked_up(path: Path, data_dir: Path) -> tuple[int, int]:
    """The hashes and lookups of a scan (in this process, one worker)."""
    counted = [0, 0]
    lookup = SegmentIndex.lookup

    def counting(
        self: SegmentIndex, hashes: np.ndarray, max_postings: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        counted[0] += hashes.shape[0]
        counted[1] += 1
        return lookup(self, hashes, max_postings)

    SegmentIndex.lookup = counting
    try:
        scan_file(path, data_dir, PlanParams(), DEFAULT.with_workers(1))
    finally:
        SegmentIndex.lookup = lookup
    return counted[0], counted[1]


def found_songs(result: ScanResult) -> list[list[tuple[Any, ...]]]:
    """Each chunk's songs, by their metadata (track ids follow the order ingests finish)."""
    return [
        [(s.track.metadata, s.score, s.timecode_ms, s.speed, s.weak) for s in c.songs]
        for c in result.chunks
    ]


def synthetic_comparison(cluster: RedisCluster, tracks: int, per: int) -> dict[str, Any]:
    hashes, postings = synthetic(tracks, per)
    n = hashes.shape[0]
    index = RedisClusterIndex(cluster.addresses, "bench", switch_grace_s=0)
    first = min(200, tracks)
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
    index.rebuild(((hashes[i : i + step], postings[i : i + step]) for i in range(0, n, step)), n)
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
        counters = server_counters(index.redis)
        redis_s = median_time(lambda: index.lookup(queries, budget))
        used = delta(server_counters(index.redis), counters)
        segments_s = median_time(lambda: segments.lookup(queries, budget))
    index.close()
    return {
        "tracks": tracks,
        "postings": n,
        "add_postings_per_s": add_rate,
        "rebuild_postings_per_s": rebuild_rate,
        "bytes_per_posting": per_posting,
        "redis_ms": redis_s * 1000,
        "segments_ms": segments_s * 1000,
        "found": int(a[0].shape[0]),
        "script_us_per_hash": used["evalsha_us"] / 20 / QUERY_HASHES,
        "net_bytes_per_lookup": (used["net_in"] + used["net_out"]) / 20,
    }


def capacity(scan: dict[str, Any], synth: dict[str, Any]) -> dict[str, float]:
    """The deployment's needs, from the measured per-chunk and per-hash costs (see
    BENCHMARKS.md for the assumptions)."""
    chunks_per_s = MODEL_HOURS_A_DAY * 3600 / DEFAULT.scan.chunk_s / 86400
    worker_core_s = 2 * scan["embedded_s"] / scan["chunks"]  # 2 workers busy the whole scan
    hashes_per_chunk = scan["hashes_per_chunk"]  # at 1M tracks each reads its own bucket
    postings_per_track = scan["postings"] / scan["tracks"]
    budget = DEFAULT.match.max_postings_per_lookup
    lookups_per_chunk = scan["lookups_per_chunk"]
    return {
        "chunks_per_s": chunks_per_s,
        "worker_cores": chunks_per_s * worker_core_s,
        "redis_cores": chunks_per_s * hashes_per_chunk * synth["script_us_per_hash"] / 1e6,
        "redis_gb": MODEL_TRACKS * postings_per_track * synth["bytes_per_posting"] / 1e9,
        "net_mb_per_chunk": lookups_per_chunk * (hashes_per_chunk * 8 + budget * 10) / 1e6,
        "postings_per_track": postings_per_track,
        "hashes_per_chunk": hashes_per_chunk,
        "lookups_per_chunk": lookups_per_chunk,
        "embedded_replica_gb": MODEL_TRACKS * postings_per_track * 12 / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=10_000)
    parser.add_argument("--postings-per-track", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=1.0, help="the scanned programme")
    parser.add_argument("--rounds", type=int, default=2, help="scan rounds (the best counts)")
    args = parser.parse_args()
    tune_allocator()  # as the CLI does: scans run in this process too
    cluster = start_redis_cluster()
    try:
        scan = scan_comparison(cluster, args.hours, args.rounds)
        synth = synthetic_comparison(cluster, args.tracks, args.postings_per_track)
    finally:
        cluster.stop()
    model = capacity(scan, synth)
    pc = scan["per_chunk"]
    print(
        f"corpus: {scan['tracks']} tracks, {scan['postings']:,} postings; ingest into the "
        f"cluster {scan['ingest_postings_per_s']:,.0f} postings/s ({scan['ingest_x_rt']:.0f}x RT)"
    )
    print(
        f"{scan['audio_s'] / 3600:.2f} h scan, 2 pool workers, {scan['chunks']} chunks: embedded "
        f"{scan['embedded_s']:.2f} s, cluster {scan['cluster_s']:.2f} s (runs "
        f"{scan['embedded_runs']} / {scan['cluster_runs']}): speed ratio "
        f"{scan['embedded_s'] / scan['cluster_s']:.2f}"
    )
    print(
        f"per chunk through the cluster: Redis CPU {pc['cpu_s'] * 1000:.1f} ms (scripts "
        f"{pc['evalsha_us'] / 1000:.1f} ms), {pc['evalsha']:.1f} script calls, network "
        f"{(pc['net_in'] + pc['net_out']) / 1000:.0f} kB"
    )
    print(
        f"synthetic index: {synth['tracks']} tracks x {args.postings_per_track} postings = "
        f"{synth['postings']:,} postings; add {synth['add_postings_per_s']:,.0f} postings/s, "
        f"rebuild {synth['rebuild_postings_per_s']:,.0f}/s"
    )
    print(f"Redis used_memory: {synth['bytes_per_posting']:.2f} bytes a posting")
    print(
        f"lookup of {QUERY_HASHES} hashes ({synth['found']:,} postings found): Redis "
        f"{synth['redis_ms']:.1f} ms, segments {synth['segments_ms']:.2f} ms, ratio "
        f"{synth['redis_ms'] / synth['segments_ms']:.1f}; script "
        f"{synth['script_us_per_hash']:.2f} µs a hash, network "
        f"{synth['net_bytes_per_lookup'] / 1000:.0f} kB a lookup"
    )
    print(
        f"capacity, {MODEL_TRACKS:,} tracks ({model['postings_per_track']:,.0f} postings each), "
        f"{MODEL_HOURS_A_DAY:,} h a day = {model['chunks_per_s']:.1f} chunks/s: worker cores "
        f"{model['worker_cores']:.1f}, Redis cores {model['redis_cores']:.1f} "
        f"({model['hashes_per_chunk']:,.0f} hashes, {model['lookups_per_chunk']:.1f} lookups a "
        f"chunk), Redis memory {model['redis_gb']:,.0f} GB (x2 with replicas), network "
        f"{model['net_mb_per_chunk']:.2f} MB a chunk; a full segment-file replica "
        f"{model['embedded_replica_gb']:,.0f} GB"
    )


if __name__ == "__main__":
    main()
