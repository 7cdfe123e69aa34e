"""Windows to plays, without a network: a programme of catalog songs, music not in the catalog
and silence, cut into consecutive 12-second windows, recognised by the scan's engine and merged
into plays by `PlayTracker`; checked against the programme's ground truth."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from songscan.chunks import Chunk
from songscan.config import DEFAULT
from songscan.streams.plays import HEAD_S, PlayEvent, PlayTracker, WindowRecognizer
from tests.api.conftest import build_catalog
from tests.api.music import RATE, excerpt, music

ENGINE_RATE = DEFAULT.fingerprint.sample_rate_hz
WINDOW_S = DEFAULT.scan.chunk_s


def to_engine_rate(samples: np.ndarray) -> np.ndarray:
    return resample_poly(samples, ENGINE_RATE // 50, RATE // 50).astype(np.float32)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, np.ndarray]]:
    root = tmp_path_factory.mktemp("plays")
    (root / "data").mkdir()
    (root / "files").mkdir()
    return root / "data", build_catalog(root / "data", root / "files")


def run(
    data_dir: Path,
    audio: np.ndarray,
    gaps: dict[int, float] | None = None,
    seen: list[tuple[int, str, PlayEvent]] | None = None,
) -> list[PlayEvent]:
    """Feed `audio` as consecutive windows; `gaps` shifts window i and later by seconds (an
    interruption before window i: the recogniser forgets its neighbour). `seen` gets each
    event with the index of the window that gave it, and whether its head or all of it."""
    recognizer = WindowRecognizer(data_dir, DEFAULT, ("",))
    tracker = PlayTracker(
        DEFAULT.match.continuity_tolerance_s, gap_tolerance_s=15.0, plays_on=recognizer.plays_on
    )
    n = int(WINDOW_S * ENGINE_RATE)
    events: list[PlayEvent] = []
    shift = 0.0
    for i in range(audio.shape[0] // n):
        if gaps and i in gaps:
            shift += gaps[i]
            recognizer.reset()
        start = i * WINDOW_S + shift
        chunk = Chunk(i, start, start + WINDOW_S)
        samples = audio[i * n : (i + 1) * n]
        head = samples[: int(HEAD_S * ENGINE_RATE)]  # as the listener: its first seconds first
        at_head = tracker.next_window_begins(i, partial(recognizer.heard, samples=head))
        revised, window = recognizer.add(chunk, samples)
        at_end = tracker.add(revised, window)
        events += at_head + at_end
        if seen is not None:
            seen += [(i, "head", e) for e in at_head] + [(i, "window", e) for e in at_end]
    return events + tracker.finish()


@pytest.mark.parametrize("lead_s", [1.0, 5.0, 7.0, 11.5])  # where the windows fall
def test_plays_of_a_programme(catalog: tuple[Path, dict[int, np.ndarray]], lead_s: float) -> None:
    data_dir, songs = catalog
    programme = [
        music(901, lead_s),  # not in the catalog
        excerpt(songs[1], 0.0, 30.0),  # song 1 from its start, for 30 s
        excerpt(songs[2], 10.0, 40.0),  # song 2 cut in at 00:10, for 30 s
        np.zeros(int(9.0 * RATE), dtype=np.float32),  # silence
        music(902, 20.0),  # not in the catalog
    ]
    audio = to_engine_rate(np.concatenate(programme))
    events = run(data_dir, audio)
    started = [e.play for e in events if e.kind == "started"]
    ended = [e.play for e in events if e.kind == "ended"]
    assert [p.song.track.audio_id for p in ended] == [1, 2]
    assert [p.song.track.audio_id for p in started] == [1, 2]  # each play starts once
    song1, song2 = ended
    assert song1.start_s == pytest.approx(lead_s, abs=1.5)
    assert song1.length_s == pytest.approx(30.0, abs=3.0)
    assert song1.timecode_ms == pytest.approx(0, abs=1500)
    assert song2.start_s == pytest.approx(lead_s + 30.0, abs=1.5)
    assert song2.length_s == pytest.approx(30.0, abs=3.0)
    assert song2.timecode_ms == pytest.approx(10_000, abs=1500)


def test_a_short_gap_keeps_the_play(catalog: tuple[Path, dict[int, np.ndarray]]) -> None:
    """A reconnect of 6 s in the middle of song 3: the windows after it continue the play
    (its position moved on with the wall clock), so it is one play, not two."""
    data_dir, songs = catalog
    first = excerpt(songs[3], 0.0, 24.0)  # windows 0, 1
    after = excerpt(songs[3], 30.0, 54.0)  # windows 2, 3: 6 s of the song lost in the gap
    audio = to_engine_rate(np.concatenate([first, after, music(903, 12.0)]))
    events = run(data_dir, audio, gaps={2: 6.0})
    ended = [e.play for e in events if e.kind == "ended"]
    assert [p.song.track.audio_id for p in ended] == [3]
    assert ended[0].length_s == pytest.approx(54.0, abs=3.0)


@pytest.mark.parametrize("lead_s", [1.0, 5.0, 8.0, 10.0, 11.5])
def test_a_song_cut_in_after_music_not_in_the_catalog(
    catalog: tuple[Path, dict[int, np.ndarray]], lead_s: float
) -> None:
    """Song 1 cut in at 00:05 after unknown music: no earlier play bounds its start, and a
    chance hit before the cut must not pull the start seconds early."""
    data_dir, songs = catalog
    programme = [music(922, lead_s), excerpt(songs[1], 5.0, 35.0), music(923, 14.0)]
    events = run(data_dir, to_engine_rate(np.concatenate(programme)))
    assert [(e.kind, e.play.song.track.audio_id) for e in events] == [
        ("started", 1),
        ("ended", 1),
    ]
    play = events[-1].play
    assert play.start_s == pytest.approx(lead_s, abs=3.0)
    assert play.length_s == pytest.approx(30.0, abs=3.0)
    assert play.timecode_ms == pytest.approx(5000, abs=3000)


def test_a_play_ends_with_the_window_it_ends_in(
    catalog: tuple[Path, dict[int, np.ndarray]],
) -> None:
    """Song 1 stops 7 s into window 2 and music not in the catalog follows: the play is
    reported by window 2 (a callback ~5 s after the song's end), not by window 3."""
    data_dir, songs = catalog
    programme = [music(941, 1.0), excerpt(songs[1], 0.0, 30.0), music(942, 30.0)]
    seen: list[tuple[int, str, PlayEvent]] = []
    run(data_dir, to_engine_rate(np.concatenate(programme)), seen=seen)
    ended = [(i, part, e.play) for i, part, e in seen if e.kind == "ended"]
    assert [(i, part, p.song.track.audio_id) for i, part, p in ended] == [(2, "window", 1)]
    assert ended[0][2].length_s == pytest.approx(30.0, abs=3.0)


def test_a_play_ending_at_a_window_s_end_ends_at_the_next_one_s_head(
    catalog: tuple[Path, dict[int, np.ndarray]],
) -> None:
    """Song 1 stops 11 s into window 2 (too late to tell inside it): the first seconds of
    window 3 show it is over (the event comes with window 3, ~5 s after the song's end)."""
    data_dir, songs = catalog
    programme = [music(943, 5.0), excerpt(songs[1], 0.0, 30.0), music(944, 30.0)]
    seen: list[tuple[int, str, PlayEvent]] = []
    events = run(data_dir, to_engine_rate(np.concatenate(programme)), seen=seen)
    assert [(e.kind, e.play.song.track.audio_id) for e in events] == [
        ("started", 1),
        ("ended", 1),
    ]
    assert [(i, part) for i, part, e in seen if e.kind == "ended"] == [(3, "head")]
    assert events[-1].play.length_s == pytest.approx(30.0, abs=3.0)
