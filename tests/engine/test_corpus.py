"""End to end on real recorded music (the fetched corpus): ingest the catalog, build a noisy
broadcast-style MP3 with exact ground truth, scan it, score it."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.broadcast import build_broadcast, find_corpus

from songscan.catalog import Catalog
from songscan.chunks import PlanParams
from songscan.config import DEFAULT
from songscan.duplicates import find_duplicate
from songscan.ingest import IngestItem, fingerprint_file, ingest
from songscan.media import decode_all
from songscan.scan import scan_file
from tests.audio import RATE, write_audio

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("corpus")]


@pytest.fixture(scope="module")
def corpus_catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    corpus = find_corpus()
    data = tmp_path_factory.mktemp("corpus") / "data"
    items = [IngestItem(p) for p in sorted((corpus / "reference").glob("*.ogg"))]
    assert len(items) >= 40
    outcomes = ingest(Catalog(data), items, DEFAULT)
    assert all(o.error is None for o in outcomes)
    return corpus, data


def test_broadcast_at_10_db_snr_mp3(corpus_catalog: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, data = corpus_catalog
    show = build_broadcast(
        corpus, tmp_path, duration_s=360, seed=11, snr_db=10, codec="mp3", bitrate_kbps=64
    )
    result = scan_file(show.path, data, PlanParams(), DEFAULT)
    assert result.billable_chunks == 30
    correct = catalog_chunks = false_positives = quiet_chunks = 0
    for c in result.chunks:
        lo, hi = c.chunk.start_s, c.chunk.end_s
        present = [
            s
            for s in show.truth.segments
            if s.kind == "catalog" and min(hi, s.file_end_s) - max(lo, s.file_start_s) > 0
        ]
        main = [s for s in present if min(hi, s.file_end_s) - max(lo, s.file_start_s) >= 10]
        if not present:
            quiet_chunks += 1
            false_positives += bool(c.songs)
        elif main and main[0].file_start_s <= lo:
            catalog_chunks += 1
            seg = main[0]
            want_ms = seg.source_time(lo, show.truth.speed) * 1000
            correct += any(
                Path(s.track.source or "").name == seg.source and abs(s.position_ms - want_ms) < 500
                for s in c.songs
            )
    assert catalog_chunks >= 8 and quiet_chunks >= 3
    assert false_positives == 0
    assert correct / catalog_chunks >= 0.9


def test_a_reference_file_is_found_as_its_own_track_and_an_excerpt_is_not(
    corpus_catalog: tuple[Path, Path], tmp_path: Path
) -> None:
    corpus, data = corpus_catalog
    catalog = Catalog(data)
    by_source = {t.source: t for t in catalog.tracks()}
    # The two airship tracks are related (a remix): each must be found as itself.
    names = ["airship_2.ogg", "airship_remix.ogg", "arctic_breeze.ogg"]
    for name in names:
        path = corpus / "reference" / name
        found = find_duplicate(catalog, fingerprint_file(IngestItem(path), DEFAULT), DEFAULT)
        assert found is not None and found.id == by_source[str(path)].id, name
    samples = decode_all(corpus / "reference" / names[0], RATE)
    excerpt = write_audio(tmp_path / "excerpt.flac", samples[: 60 * RATE])  # its first minute
    assert find_duplicate(catalog, fingerprint_file(IngestItem(excerpt), DEFAULT), DEFAULT) is None
