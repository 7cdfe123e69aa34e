"""The catalog's stored peaks and the pair postings derived from them."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from songscan.catalog import FORMAT, Catalog
from songscan.config import DEFAULT
from songscan.errors import SongscanError
from songscan.fingerprint import reference_pairs, reference_peaks
from songscan.index import unpack_postings
from songscan.media import decode_all

from .conftest import Library, set_format, stored_format

CFG = DEFAULT.fingerprint


def test_stored_peaks_are_the_tracks_peaks(library: Library) -> None:
    catalog = Catalog(library.data)
    track = catalog.get(2)
    want = reference_peaks(decode_all(library.files[2], CFG.sample_rate_hz), CFG)
    got = catalog.peaks(track.id)
    assert len(got) == len(want) > 100
    np.testing.assert_allclose(got.time_frames, want.time_frames, atol=1 / 512 + 1e-6)
    np.testing.assert_allclose(got.freq_hz, want.freq_hz, atol=0.05 + 1e-3)


def test_pair_postings_are_what_a_pair_index_of_those_tracks_would_return(
    library: Library,
) -> None:
    catalog = Catalog(library.data)
    one, three = catalog.get(1).id, catalog.get(3).id
    pairs = {t: reference_pairs(catalog.peaks(t), CFG) for t in (one, three)}
    rng = np.random.default_rng(5)
    # Queries: some hashes of each track (a few repeated), and hashes found in neither.
    queries = np.concatenate(
        [
            rng.choice(pairs[one].hashes, 200),
            rng.choice(pairs[three].hashes, 200),
            rng.integers(0, 1 << 23, 300).astype(np.uint32),
        ]
    )
    qi, postings = catalog.pair_postings(np.array([one, three]), queries, CFG)
    tracks, frames = unpack_postings(postings)
    got = sorted(zip(qi.tolist(), tracks.tolist(), frames.tolist(), strict=True))
    want = sorted(
        (i, t, int(f))
        for t, found in pairs.items()
        for i, q in enumerate(queries)
        for f in np.rint(found.anchor_frames[found.hashes == q])
    )
    assert got == want
    assert len(want) > 400
    # A track that is not asked for contributes nothing.
    qi_two, _ = catalog.pair_postings(np.array([catalog.get(2).id]), queries[:400], CFG)
    assert qi_two.shape[0] < len(want) // 4


def test_removing_a_track_drops_its_peaks(library: Library, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(library.data, data)
    catalog = Catalog(data)
    track = catalog.get(3)
    assert len(catalog.peaks(track.id)) > 0
    catalog.remove(3)
    assert len(catalog.peaks(track.id)) == 0
    sizes = catalog.stats()
    assert sizes["index_bytes"] == sizes["postings_bytes"] + sizes["peaks_bytes"]


def test_a_data_dir_of_another_format_is_refused(library: Library, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(library.data, data)
    for version, advice in ((1, "add the reference tracks again"), (2, "catalog reindex")):
        set_format(data, version)
        with pytest.raises(SongscanError, match=advice):
            Catalog(data)
    with pytest.raises(SongscanError, match="add the reference tracks again"):
        set_format(data, 1)
        Catalog(data, upgrade=True)  # format 1 kept no peaks to rebuild from
    empty = tmp_path / "empty"
    Catalog(empty).close()  # a new data dir is stamped with the current format
    assert stored_format(empty) == FORMAT


def test_reindex_rebuilds_the_index_ingest_built_from_the_stored_peaks(
    library: Library, tmp_path: Path
) -> None:
    """A format-2 data dir (its index of older hashes stood in for by folded ones) is rebuilt
    from the catalog's peaks alone: the same postings as ingest wrote, the same hash counts,
    and the directory stamped with the current format."""
    data = tmp_path / "data"
    shutil.copytree(library.data, data)
    catalog = Catalog(data)
    want_hashes, want_postings = catalog.index.every_posting()
    counts = {t.id: t.hash_count for t in catalog.tracks()}
    catalog.index.rebuild([(want_hashes >> 4, want_postings)])  # an index of other hashes
    catalog.close()
    with sqlite3.connect(data / "catalog.sqlite") as db:
        db.execute("UPDATE catalog_state SET format = 2")
        db.execute("UPDATE tracks SET hash_count = 1")
    old = Catalog(data, upgrade=True)
    done = []
    old.reindex(CFG, on_track=lambda: done.append(1))
    assert len(done) == 3
    catalog = Catalog(data)
    hashes, postings = catalog.index.every_posting()
    assert sorted(zip(hashes.tolist(), postings.tolist(), strict=True)) == sorted(
        zip(want_hashes.tolist(), want_postings.tolist(), strict=True)
    )
    assert {t.id: t.hash_count for t in catalog.tracks()} == counts
    assert catalog.index.segment_count() == 1
