"""Real recorded music on a live Icecast stream (the fetched corpus): a catalog of a few
reference tracks; a programme of two of them (one from its start, one cut in at 1:00), music
that is not in the catalog and speech, played in real time (about two minutes); the callbacks
checked against that ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench.broadcast import find_corpus

from songscan.catalog import Catalog
from songscan.config import DEFAULT
from songscan.ingest import IngestItem, ingest
from songscan.media import decode_all
from tests.api.music import RATE
from tests.streams.conftest import serve_streams
from tests.streams.radio import CallbackReceiver, Icecast, Piece, SourceClient
from tests.streams.test_live import check_plays

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("corpus")]


def clip(path: Path, start_s: float, seconds: float) -> np.ndarray:
    samples = decode_all(path, RATE, start_s=start_s, end_s=start_s + seconds)
    return (samples * 0.9).astype(np.float32)


def test_corpus_programme_on_icecast(
    tmp_path_factory: pytest.TempPathFactory, icecast: Icecast
) -> None:
    corpus = find_corpus()
    references = sorted((corpus / "reference").glob("*.ogg"))[:8]
    root = tmp_path_factory.mktemp("corpus-stream")
    data = root / "data"
    outcomes = ingest(Catalog(data), [IngestItem(p) for p in references], DEFAULT, workers=1)
    assert all(o.error is None for o in outcomes)
    titles = {Path(t.source or "").name: t.metadata.title for t in Catalog(data).tracks()}
    first, second = references[2], references[5]  # not airship_*: a remix pair
    distractor = sorted((corpus / "distractor").glob("*.ogg"))[0]
    speech = max((corpus / "speech").glob("*.ogg"), key=lambda p: p.stat().st_size)
    programme = [
        Piece("unknown", clip(distractor, 30.0, 12.0)),
        Piece("song-a", clip(first, 0.0, 40.0)),
        Piece("song-b", clip(second, 60.0, 35.0)),
        Piece("speech", clip(speech, 0.0, 10.0)),
        Piece("unknown", clip(distractor, 90.0, 20.0)),
    ]
    song_titles = {"song-a": titles[first.name], "song-b": titles[second.name]}
    with serve_streams(data, root, {}) as server, CallbackReceiver() as receiver:
        token = server.new_token()
        source = SourceClient(icecast, "corpus.mp3", programme, 128_000).play()
        server.call("setCallbackUrl", token, url=receiver.url())
        added = server.call("addStream", token, url=icecast.url("corpus.mp3"), radio_id=9)
        assert added["status"] == "success", added
        source.wait()
        assert receiver.wait_for(lambda r: len(r.results()) >= 2, timeout_s=40)
        check_plays(receiver.results(), programme, source.started, lengths=True, titles=song_titles)
