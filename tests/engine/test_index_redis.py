"""What the Redis Cluster index promises beyond the contract every backend passes
(test_index.py): over a real 6-node cluster on loopback."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis.cluster import NodeCommands
from redis.exceptions import ResponseError
from scipy.signal import resample_poly

from songscan.catalog import Catalog, FingerprintedTrack, TrackMetadata
from songscan.config import DEFAULT
from songscan.errors import ConfigError, IndexUnavailable, NotFound
from songscan.fingerprint import Peaks, query_peaks
from songscan.index import pack_postings, unpack_postings
from songscan.index.backends import open_index, parse_redis_cluster_url
from songscan.index.rediscluster import (
    _LOOKUP,
    _SHA,
    OVERFLOW_POSTINGS,
    TAG_BITS,
    RedisClusterIndex,
    bucket_key,
)
from songscan.index.segments import HASH_BITS, SegmentIndex
from songscan.matcher import match_peaks
from tests.audio import RATE
from tests.servers import RedisCluster, start_redis_cluster

from .conftest import Library

SERIAL = DEFAULT.with_workers(1)
RATE_8K = SERIAL.fingerprint.sample_rate_hz


@pytest.fixture
def index(redis_cluster: RedisCluster) -> Iterator[RedisClusterIndex]:
    opened = RedisClusterIndex(
        redis_cluster.addresses, f"t{uuid.uuid4().hex[:10]}", switch_grace_s=0.05
    )
    yield opened
    opened.close()


def random_postings(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 1 << HASH_BITS, n).astype(np.uint32)
    return hashes, pack_postings(rng.integers(1, 5000, n), rng.integers(0, 1 << 20, n))


def test_a_retried_add_leaves_no_duplicate_postings(index: RedisClusterIndex) -> None:
    hashes, postings = random_postings(5000, 1)
    hashes[:500] = 42  # one long run too (past the first round trip's inline limit)
    index.add(hashes[:3000], postings[:3000])  # a first attempt that stopped part way
    index.add(hashes, postings)  # the retry
    index.add(hashes, postings)
    assert index.posting_count() == 5000
    stored_hashes, stored = index.every_posting()
    assert sorted(zip(stored_hashes.tolist(), stored.tolist(), strict=True)) == sorted(
        zip(hashes.tolist(), postings.tolist(), strict=True)
    )
    _, found = index.lookup(np.array([42], dtype=np.uint32))
    assert found.shape[0] == 500 and set(found.tolist()) == set(postings[:500].tolist())


def test_a_lookup_is_one_round_trip_per_cluster_node(
    index: RedisClusterIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashes, postings = random_postings(50_000, 2)
    hashes[:1000] = 7  # a hash with more postings than the first round trip returns
    index.add(hashes, postings)
    trips: list[Counter[str]] = []
    write = NodeCommands.write

    def counted(self: NodeCommands) -> None:  # each call sends one node its commands at once
        trips[-1][f"{self.connection.host}:{self.connection.port}"] += 1
        write(self)

    monkeypatch.setattr(NodeCommands, "write", counted)
    queries = np.concatenate([hashes[1000:4000], random_postings(2000, 3)[0]])
    for budget in (None, 70_000):
        trips.append(Counter())
        qi, _ = index.lookup(queries, budget)
        assert qi.shape[0] == 3000
        assert len(trips[-1]) == 3 and set(trips[-1].values()) == {1}, trips[-1]
    # A long run the budget keeps: a second round trip, to its bucket's node alone.
    trips.append(Counter())
    qi, _ = index.lookup(np.concatenate([queries, [7]]), 70_000)
    assert qi.shape[0] == 4000 and sum(trips[-1].values()) == 4
    assert OVERFLOW_POSTINGS < 1000


def test_a_lookup_sent_to_a_master_without_its_slots_fails_rather_than_finding_nothing(
    index: RedisClusterIndex,
) -> None:
    """The lookup script builds its buckets' keys (they are not declared): a master asked for
    buckets of slots it does not serve (a stale slot map after a resharding) raises."""
    hashes, postings = random_postings(2000, 6)
    index.add(hashes, postings)
    generation = index._current()
    assert generation is not None
    hash_ = int(hashes[0])
    bucket = hash_ >> generation.shift
    owner = index.redis.get_node_from_key(bucket_key(index.prefix, generation, bucket))
    other = next(n for n in index.redis.get_primaries() if n.name != owner.name)
    query = np.array([hash_], dtype=">u4").tobytes()
    tag_span = 1 << max(0, HASH_BITS - generation.shift - TAG_BITS)
    args = [f"{index.prefix}:{generation.number}:", 1 << generation.shift, tag_span, 0, query]
    sha = _SHA[_LOOKUP]
    found = index.redis.execute_command("EVALSHA", sha, 0, *args, target_nodes=owner)
    assert found[0] == [1]
    with pytest.raises(ResponseError, match="non local key"):
        index.redis.execute_command("EVALSHA", sha, 0, *args, target_nodes=other)


def test_a_posting_costs_at_most_16_bytes_of_used_memory(
    index: RedisClusterIndex, redis_cluster: RedisCluster
) -> None:
    """1.2M postings (2,000 tracks' worth), as a rebuild or compaction lays them out: the
    masters' used_memory grows by at most 16 bytes a posting."""

    def used_memory() -> int:
        info = index.redis.info("memory", target_nodes=index.redis.PRIMARIES)
        return sum(node["used_memory"] for node in info.values())

    # Fill each master's replication backlog (1 MB, allocated as writes pass) beforehand: it
    # is a fixed cost, not the index's.
    filler = f"{index.prefix}-filler"
    for node in index.redis.get_primaries():
        for _ in range(3):
            index.redis.execute_command("SET", filler, b"x" * 500_000, target_nodes=node)
        index.redis.execute_command("UNLINK", filler, target_nodes=node)
    n = 1_200_000
    hashes, postings = random_postings(n, 4)
    before = used_memory()
    batches = ((hashes[i : i + 200_000], postings[i : i + 200_000]) for i in range(0, n, 200_000))
    index.rebuild(batches, expected_postings=n)
    per_posting = (used_memory() - before) / n
    assert index.posting_count() == n
    print(f"redis-cluster index: {per_posting:.2f} bytes of used_memory a posting")
    assert per_posting <= 16


def test_readers_see_the_old_or_the_new_index_during_a_rebuild(index: RedisClusterIndex) -> None:
    queries = np.arange(2000, dtype=np.uint32)
    for track in (1, 2):
        index.add(queries, pack_postings(track, queries))
    reader = RedisClusterIndex(_addresses(index), index.prefix)
    seen: list[frozenset[int]] = []
    stop = threading.Event()
    failed: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                _, found = reader.lookup(queries)
                tracks = unpack_postings(found)[0]
                seen.append(frozenset(Counter(tracks.tolist()).items()))
        except BaseException as exc:  # reported below
            failed.append(exc)

    thread = threading.Thread(target=read)
    thread.start()

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for track in (3, 4, 5):
            time.sleep(0.2)  # readers run meanwhile
            yield queries, pack_postings(track, queries)

    try:
        index.rebuild(batches())
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        reader.close()
    assert failed == []
    old = frozenset({(1, 2000), (2, 2000)})
    new = frozenset({(3, 2000), (4, 2000), (5, 2000)})
    assert set(seen) <= {old, new} and seen[0] == old and seen[-1] == new


def _addresses(index: RedisClusterIndex) -> list[tuple[str, int]]:
    return [(node.host, int(node.port)) for node in index.redis.get_primaries()]


@pytest.mark.slow
def test_a_stopped_master_fails_writes_and_reads_until_its_replica_takes_over(
    tmp_path: Path,
) -> None:
    """Own cluster (this one loses a node). While a master is down, an add raises, so an
    ingest fails and its track stays invisible; a lookup raises too: never a partial answer.
    After the failover both work, and what was acknowledged before is all there."""
    cluster = start_redis_cluster()
    catalog = Catalog(tmp_path / "data")
    try:
        index = RedisClusterIndex(cluster.addresses, "failover", switch_grace_s=0)
        hashes, postings = random_postings(20_000, 5)
        index.add(hashes[:10_000], postings[:10_000])
        victim = cluster.masters()[0]
        victim.stop()
        with pytest.raises(IndexUnavailable):
            index.add(hashes[10_000:], postings[10_000:])
        catalog.index = index  # type: ignore[assignment]
        no_peaks = Peaks(*(np.zeros(0, np.float32),) * 3)
        track = FingerprintedTrack(
            TrackMetadata(title="lost"), hashes[:3000], np.arange(3000), 60.0, no_peaks, 77
        )
        with pytest.raises(IndexUnavailable):
            catalog.add([track])
        assert catalog.live_ids().shape[0] == 0
        with pytest.raises(NotFound):
            catalog.get(77)
        with pytest.raises(IndexUnavailable):
            index.lookup(hashes[:5000])
        cluster.wait_ok(timeout_s=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                qi, found = index.lookup(hashes[:10_000])
                break
            except IndexUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        want = sorted(zip(hashes[:10_000].tolist(), postings[:10_000].tolist(), strict=True))
        got = sorted(zip(hashes[qi].tolist(), found.tolist(), strict=True))
        assert got == want
        # The retried ingest, after the failover: written once. With its replica gone the new
        # master cannot replicate, so it waits for none here.
        index.wait_replicas = 0
        index.add(hashes[10_000:], postings[10_000:])
        index.add(hashes, postings)
        qi, found = index.lookup(hashes)
        assert found.shape[0] == 20_000
        assert [t.audio_id for t in catalog.add([track])] == [77]  # the retried ingest
        assert catalog.live_ids().tolist() == [catalog.get(77).id]
        index.close()
    finally:
        catalog.index = SegmentIndex(tmp_path / "data" / "index")
        catalog.close()
        cluster.stop()


def test_open_index_picks_the_backend_from_the_url(
    tmp_path: Path, redis_cluster: RedisCluster
) -> None:
    assert isinstance(open_index(None, tmp_path / "index"), SegmentIndex)
    url = redis_cluster.url + f"?prefix=t{uuid.uuid4().hex[:8]}&wait_replicas=1"
    index: Any = open_index(url, tmp_path / "unused")
    assert isinstance(index, RedisClusterIndex) and index.wait_replicas == 1
    index.add(np.arange(10, dtype=np.uint32), pack_postings(1, np.arange(10)))
    assert index.posting_count() == 10
    index.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:7000",
        "redis-cluster://",
        "redis-cluster://127.0.0.1",
        "redis-cluster://127.0.0.1:notaport",
        "redis-cluster://127.0.0.1:70000",
        "redis-cluster://127.0.0.1:7000/some/path",
        "redis-cluster://127.0.0.1:7000?prefix=a{b}",
        "redis-cluster://127.0.0.1:7000?wait_replicas=-1",
        "redis-cluster://127.0.0.1:7000?colour=blue",
        "redis-cluster://nopassword@127.0.0.1:7000",
        "redis-cluster://user:@127.0.0.1:7000",
    ],
)
def test_a_malformed_index_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="index URL"):
        parse_redis_cluster_url(url)


def test_an_index_url_lists_its_nodes_and_options() -> None:
    nodes, options = parse_redis_cluster_url("redis-cluster://a:1,b.example:7002?prefix=x")
    assert nodes == [("a", 1), ("b.example", 7002)] and options == {"prefix": "x"}
    nodes, options = parse_redis_cluster_url("redis-cluster://:p%40ss%3Aw@a:1,b:2")
    assert nodes == [("a", 1), ("b", 2)] and options == {"password": "p@ss:w"}
    _, options = parse_redis_cluster_url("redis-cluster://songscan:s3cret@a:1?wait_replicas=0")
    assert options == {"username": "songscan", "password": "s3cret", "wait_replicas": 0}


def test_a_cluster_that_requires_a_password_is_used_with_the_one_in_the_url(
    tmp_path: Path,
) -> None:
    """Nodes started with `requirepass`: the URL's password opens the index (the nodes the
    client learns from the cluster are asked with it too: a lookup reads every master); a
    wrong one fails with an error that does not carry it."""
    cluster = start_redis_cluster(password="p@ss:w0rd/")
    try:
        url = cluster.url + "?prefix=t"
        assert "p%40ss%3Aw0rd%2F@" in url
        index: Any = open_index(url, tmp_path / "unused")
        hashes = np.arange(0, 1 << 20, 997, dtype=np.uint32)  # spread over every master's slots
        index.add(hashes, pack_postings(7, np.arange(hashes.shape[0])))
        found, _ = index.lookup(hashes)
        assert found.shape[0] == hashes.shape[0]
        index.close()
        wrong = url.replace("p%40ss%3Aw0rd%2F", "wrong-password")
        with pytest.raises(IndexUnavailable) as raised:
            open_index(wrong, tmp_path / "unused")
        assert "wrong-password" not in str(raised.value)
    finally:
        cluster.stop()


def test_the_matcher_finds_the_same_on_both_backends(
    library: Library, redis_cluster: RedisCluster
) -> None:
    """The catalog's postings copied into the cluster: every chunk of a mix (songs, a quieter
    song over noise, noise) gets equal matches (tracks, offsets, scores) from either index."""
    catalog = Catalog(library.data)
    redis_index = RedisClusterIndex(redis_cluster.addresses, f"t{uuid.uuid4().hex[:10]}")
    try:
        redis_index.rebuild(iter([catalog.index.every_posting()]))  # type: ignore[attr-defined]
        fp = SERIAL.fingerprint
        songs = [
            resample_poly(library.songs[i], RATE_8K, RATE).astype(np.float32) for i in (1, 2, 3)
        ]
        noise = np.random.default_rng(6).normal(0, 0.1, 12 * RATE_8K).astype(np.float32)
        pieces = [song[12 * RATE_8K : 24 * RATE_8K] for song in songs]
        pieces += [0.3 * songs[1][30 * RATE_8K : 42 * RATE_8K] + noise, noise]
        segment_index = catalog.index
        found = []
        for index in (segment_index, redis_index):
            catalog.index = index  # type: ignore[assignment]
            found.append(
                [
                    match_peaks(query_peaks(x, fp), catalog, catalog.live_ids(), SERIAL)
                    for x in pieces
                ]
            )
        catalog.index = segment_index
        assert found[0] == found[1]
        assert [m[0].track_id for m in found[0][:3] if m] == sorted(
            catalog.get(i).id for i in (1, 2, 3)
        )
    finally:
        redis_index.close()
        catalog.close()


def test_an_add_during_a_rebuild_lands_in_the_new_generation(index: RedisClusterIndex) -> None:
    """An ingest while a compaction or reindex runs (another API node, say) writes to both
    generations, so its postings survive the switch; a second rebuild meanwhile is refused."""
    old = np.arange(100, dtype=np.uint32), pack_postings(1, np.arange(100))
    index.add(*old)
    other = RedisClusterIndex(_addresses(index), index.prefix)
    fresh = random_postings(3000, 7)
    ingested = np.arange(50, dtype=np.uint32), pack_postings(9, np.arange(50))

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield fresh[0][:1500], fresh[1][:1500]
        other.add(*ingested)
        with pytest.raises(IndexUnavailable, match="another rebuild"):
            other.rebuild(iter([old]))
        yield fresh[0][1500:], fresh[1][1500:]

    try:
        index.rebuild(batches())
        assert other.lookup(ingested[0])[1].tolist() == ingested[1].tolist()
    finally:
        other.close()
    hashes, postings = index.every_posting()
    want = zip(
        np.concatenate([fresh[0], ingested[0]]).tolist(),
        np.concatenate([fresh[1], ingested[1]]).tolist(),
        strict=True,
    )
    assert sorted(zip(hashes.tolist(), postings.tolist(), strict=True)) == sorted(want)
    assert index.posting_count() == 3050
