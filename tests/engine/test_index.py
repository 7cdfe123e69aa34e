from __future__ import annotations

import json
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from songscan.index import pack_postings, segments, unpack_postings
from songscan.index.segments import MAX_SEGMENTS, SegmentIndex

# Tests that take `open_index` run on every backend (segment files, Redis Cluster): the
# contract of `PostingIndex`. The others test the segment files' own machinery.
OpenIndex = Callable[[], Any]


def test_every_backend_finds_every_posting(open_index: OpenIndex) -> None:
    rng = np.random.default_rng(11)
    index = open_index()
    assert index.posting_count() == 0
    assert index.lookup(np.arange(10, dtype=np.uint32))[0].shape[0] == 0
    keys = rng.integers(0, 1 << segments.HASH_BITS, 20_000).astype(np.uint32)
    keys[:3000] = rng.integers(0, 700, 3000)  # crowded hash values too, across the parts
    values = pack_postings(rng.integers(1, 50, 20_000), rng.integers(0, 100_000, 20_000))
    for part in np.array_split(np.arange(20_000), 3):
        index.add(keys[part], values[part])
    queries = np.concatenate([keys[::40], keys[:5], rng.integers(0, 700, 50).astype(np.uint32)])
    qi, found = open_index().lookup(queries)  # another handle: what is stored, not cached
    got = sorted((int(queries[i]), int(i), int(v)) for i, v in zip(qi, found, strict=True))
    want = sorted((int(q), i, int(v)) for i, q in enumerate(queries) for v in values[keys == q])
    assert got == want
    assert index.posting_count() == 20_000
    every_hash, every_posting = index.every_posting()
    assert sorted(zip(every_hash.tolist(), every_posting.tolist(), strict=True)) == sorted(
        zip(keys.tolist(), values.tolist(), strict=True)
    )
    with pytest.raises(ValueError, match="below"):
        index.add(np.array([1 << segments.HASH_BITS], dtype=np.uint32), values[:1])
    with pytest.raises(ValueError, match="differ"):
        index.add(keys[:2], values[:1])


@pytest.mark.parametrize("max_bucket_entries", [segments.MAX_BUCKET_ENTRIES, 0])
@pytest.mark.parametrize("directory_bits", [segments.MEMORY_DIRECTORY_BITS, 4])
@pytest.mark.parametrize("key_range", [5000, 1 << segments.HASH_BITS])
def test_lookup_finds_every_posting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    max_bucket_entries: int,
    directory_bits: int,
    key_range: int,
) -> None:
    # Small segments are read through their in-memory bucket directory (one bucket per
    # posting, or a few large ones when its size is capped), or binary searched when the
    # buckets are crowded (max_bucket_entries 0); keys crowd a few buckets or spread.
    monkeypatch.setattr(segments, "MAX_BUCKET_ENTRIES", max_bucket_entries)
    monkeypatch.setattr(segments, "MEMORY_DIRECTORY_BITS", directory_bits)
    rng = np.random.default_rng(1)
    index = SegmentIndex(tmp_path)
    keys = rng.integers(0, key_range, 20_000).astype(np.uint32)
    values = pack_postings(rng.integers(1, 50, 20_000), rng.integers(0, 10_000, 20_000))
    for part in np.array_split(np.arange(20_000), 3):
        index.add(keys[part], values[part])
    queries = np.concatenate([keys[::50], rng.integers(0, key_range, 300).astype(np.uint32)])
    qi, found = index.lookup(queries)
    got = sorted((int(queries[i]), int(v)) for i, v in zip(qi, found, strict=True))
    want = sorted((int(q), int(v)) for q in queries for v in values[keys == q])
    assert got == want
    assert index.posting_count() == 20_000
    assert index.size_bytes() >= 20_000 * 12


@pytest.mark.parametrize("hash_bits", [segments.HASH_BITS, 9])
def test_large_segments_look_up_through_a_stored_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hash_bits: int
) -> None:
    # One bucket per 8 postings: 512 buckets over 2^28 hash values (a lookup compares the
    # entries of its bucket); or, with more postings than hash values (2^9), one bucket per
    # hash value, and no hashes file: the directory implies them.
    monkeypatch.setattr(segments, "DIRECTORY_MIN_POSTINGS", 1000)
    monkeypatch.setattr(segments, "HASH_BITS", hash_bits)
    rng = np.random.default_rng(2)
    index = SegmentIndex(tmp_path)
    keys = rng.integers(0, 1 << hash_bits, 5000).astype(np.uint32)
    keys[:100] = (1 << hash_bits) - 1  # the last hash value has a run too
    values = pack_postings(rng.integers(1, 50, 5000), rng.integers(0, 10_000, 5000))
    index.add(keys, values)
    (stored,) = tmp_path.glob("*.directory.npy")
    assert np.load(stored).shape[0] == (1 << 9) + 1
    assert len(list(tmp_path.glob("*.hashes.npy"))) == (hash_bits > 9)
    index.add(keys[:10], values[:10])  # a small segment beside it, searched without one
    all_keys, all_values = np.concatenate([keys, keys[:10]]), np.concatenate([values, values[:10]])
    queries = np.unique(np.concatenate([keys[::7], rng.integers(0, 1 << hash_bits, 500)]))
    want = sorted((int(q), int(v)) for q in queries for v in all_values[all_keys == q])
    everything = sorted(zip(all_keys.tolist(), all_values.tolist(), strict=True))
    for compacted in (False, True):
        if compacted:  # merged into one segment: its hashes come from the directory
            index.compact(None)
            assert index.segment_count() == 1
        qi, found = SegmentIndex(tmp_path).lookup(queries.astype(np.uint32))
        got = sorted((int(queries[i]), int(v)) for i, v in zip(qi, found, strict=True))
        assert got == want
        every_hash, every_posting = index.every_posting()
        assert sorted(zip(every_hash.tolist(), every_posting.tolist(), strict=True)) == everything
        assert index.posting_count() == 5010
    with pytest.raises(ValueError, match="below"):
        index.add(np.array([1 << hash_bits], dtype=np.uint32), values[:1])


def test_segments_merge_and_compaction_drops_dead_tracks(open_index: OpenIndex) -> None:
    index = open_index()
    for track in range(1, MAX_SEGMENTS + 3):
        index.add(np.arange(100, dtype=np.uint32), pack_postings(track, np.arange(100)))
    if isinstance(index, SegmentIndex):
        assert index.segment_count() <= MAX_SEGMENTS
    assert index.posting_count() == 100 * (MAX_SEGMENTS + 2)
    index.compact(np.array([2, 3], dtype=np.int64))
    if isinstance(index, SegmentIndex):
        assert index.segment_count() == 1
    assert index.posting_count() == 200
    _, postings = open_index().lookup(np.arange(100, dtype=np.uint32))
    tracks, frames = unpack_postings(postings)
    assert set(tracks.tolist()) == {2, 3}
    assert sorted(frames[tracks == 2].tolist()) == list(range(100))


@pytest.mark.parametrize("hash_bits", [segments.HASH_BITS, 9])
@pytest.mark.parametrize("live", [None, [2, 5, 7]])
def test_merges_stream_by_hash_ranges_into_the_same_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hash_bits: int, live: list[int] | None
) -> None:
    """A merge written range by range equals one stable sort of the parts laid end to end
    (equal hashes keep the parts' order), dead tracks left out; with a stored directory, and
    with one that replaces the hashes (2^9 hash values, fewer than the postings)."""
    monkeypatch.setattr(segments, "MERGE_PIECE_POSTINGS", 700)
    monkeypatch.setattr(segments, "DIRECTORY_MIN_POSTINGS", 2000)
    monkeypatch.setattr(segments, "HASH_BITS", hash_bits)
    rng = np.random.default_rng(3)
    index = SegmentIndex(tmp_path)
    all_keys, all_values = [], []
    for track in range(1, 9):
        keys = rng.integers(0, 1 << hash_bits, 600).astype(np.uint32)
        keys[:50] = 7  # a crowded hash value, in every part
        values = pack_postings(track, rng.integers(0, 10_000, 600))
        index.add(keys, values)
        all_keys.append(keys)
        all_values.append(values)
    index.compact(None if live is None else np.array(live, dtype=np.int64))
    assert index.segment_count() == 1
    keys, values = np.concatenate(all_keys), np.concatenate(all_values)
    if live is not None:
        keep = np.isin(unpack_postings(values)[0], live)
        keys, values = keys[keep], values[keep]
    order = np.argsort(keys, kind="stable")
    got_keys, got_values = index.every_posting()
    assert np.array_equal(got_keys, keys[order])
    assert np.array_equal(got_values, values[order])
    assert len(list(tmp_path.glob("*.directory.npy"))) == (keys.shape[0] >= 2000)
    qi, found = SegmentIndex(tmp_path).lookup(np.array([7, 8], dtype=np.uint32))
    assert np.array_equal(found[qi == 0], values[order][keys[order] == 7])


def test_a_merge_holds_a_piece_in_memory_not_the_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compacting 24 MB of postings allocates a small multiple of one piece (64k postings), not
    of the segments (a merge in memory would take several times their size)."""
    monkeypatch.setattr(segments, "MERGE_PIECE_POSTINGS", 1 << 16)
    monkeypatch.setattr(segments, "MEMORY_DIRECTORY_BITS", 12)
    rng = np.random.default_rng(4)
    index = SegmentIndex(tmp_path)
    for track in range(1, 5):
        keys = rng.integers(0, 1 << segments.HASH_BITS, 500_000).astype(np.uint32)
        index.add(keys, pack_postings(track, rng.integers(0, 10_000, 500_000)))
    tracemalloc.start()
    try:
        index.compact(np.array([1, 2, 3, 4], dtype=np.int64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.posting_count() == 2_000_000
    assert peak < 8_000_000, peak


def test_a_rebuild_replaces_every_posting_at_once_or_not_at_all(
    open_index: OpenIndex, tmp_path: Path
) -> None:
    index = open_index()
    for track in (1, 2, 3):
        index.add(np.arange(100, dtype=np.uint32), pack_postings(track, np.arange(100)))
    before = index.every_posting()

    def failing() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield np.arange(50, dtype=np.uint32), pack_postings(9, np.arange(50))
        raise RuntimeError("the process dies here")

    with pytest.raises(RuntimeError):
        index.rebuild(failing())
    assert all(np.array_equal(a, b) for a, b in zip(index.every_posting(), before, strict=True))
    batches = [
        (np.arange(n, dtype=np.uint32), pack_postings(t, np.arange(n)))
        for t, n in ((7, 30), (8, 20))
    ]
    index.rebuild(iter(batches))  # the next writer also removes what the failed one wrote
    hashes, postings = open_index().every_posting()
    assert sorted(set(unpack_postings(postings)[0].tolist())) == [7, 8]
    assert hashes.shape[0] == 50 and index.posting_count() == 50
    if not isinstance(index, SegmentIndex):
        return
    assert index.segment_count() == 1
    tmp_path = tmp_path / "index"
    (name,) = {p.name.split(".", 1)[0] for p in tmp_path.glob("seg-*")}
    assert json.loads((tmp_path / "manifest.json").read_text())["segments"][0]["name"] == name


def test_orphan_segment_files_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    index = SegmentIndex(tmp_path)
    index.add(np.arange(10, dtype=np.uint32), pack_postings(1, np.arange(10)))
    (tmp_path / "seg-deadbeef0000.hashes.npy").write_bytes(b"partial")
    (tmp_path / "seg-cafe.postings.npy.tmp").write_bytes(b"partial")
    index.add(np.arange(10, dtype=np.uint32), pack_postings(2, np.arange(10)))
    names = {p.name for p in tmp_path.iterdir()}
    assert "seg-deadbeef0000.hashes.npy" not in names
    assert "seg-cafe.postings.npy.tmp" not in names
    assert SegmentIndex(tmp_path).posting_count() == 20


def test_reader_sees_whole_batches_while_a_writer_adds(open_index: OpenIndex) -> None:
    writer = open_index()
    reader = open_index()
    batch = 1000
    stop = threading.Event()
    seen: list[int] = []
    failed: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                _, postings = reader.lookup(np.arange(batch, dtype=np.uint32))
                seen.append(postings.shape[0])
        except BaseException as exc:  # reported below: a dead reader must fail the test
            failed.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    for track in range(1, 30):
        writer.add(np.arange(batch, dtype=np.uint32), pack_postings(track, np.arange(batch)))
    stop.set()
    thread.join()
    assert failed == []
    assert seen and all(n % batch == 0 for n in seen)
    assert reader.lookup(np.arange(batch, dtype=np.uint32))[1].shape[0] == 29 * batch


def test_a_posting_budget_leaves_out_the_commonest_hashes(open_index: OpenIndex) -> None:
    index = open_index()
    # hash 1: 1000 postings (everywhere), hash 2: 10, hash 3: 3, hash 4: none
    keys = np.concatenate([np.full(1000, 1), np.full(10, 2), np.full(3, 3)]).astype(np.uint32)
    index.add(keys, pack_postings(np.arange(1013) % 50 + 1, np.arange(1013)))
    queries = np.array([1, 2, 3, 4, 2], dtype=np.uint32)
    qi, _ = index.lookup(queries)
    assert qi.shape[0] == 1000 + 10 + 3 + 10
    qi, postings = index.lookup(queries, max_postings=100)
    assert sorted(set(queries[qi].tolist())) == [2, 3]
    assert postings.shape[0] == 23
    qi, _ = index.lookup(queries, max_postings=12)  # the rarest first: hash 3, then one hash 2
    assert queries[qi].tolist().count(3) == 3 and qi.shape[0] <= 12
    qi, postings = index.lookup(queries[:4], max_postings=1013)  # within the budget: all
    assert queries[qi].tolist().count(1) == 1000 and qi.shape[0] == 1013
    assert np.array_equal(
        np.sort(postings[queries[qi] == 1]), np.sort(index.lookup(queries[:1])[1])
    )


def test_a_posting_budget_serves_the_rarest_hashes_first() -> None:
    rng = np.random.default_rng(5)
    for budget in (0, 1, 50, 333, 1000, 10_000):
        counts = rng.integers(0, 40, 200)
        keep = segments._rarest_within(counts, budget)
        # The rarest first, ties in query order, as long as they fit.
        by_rarity = np.lexsort((np.arange(200), counts))
        fits = np.cumsum(counts[by_rarity]) <= budget
        want = np.zeros(200, dtype=bool)
        want[by_rarity[: np.argmin(fits) if not fits.all() else 200]] = True
        assert np.array_equal(keep, want), budget
        assert counts[keep].sum() <= budget
