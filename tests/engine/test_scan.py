"""Ingest -> scan round trips on synthesised music, through the real pipeline."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from bench.broadcast import time_stretch
from scipy.signal import resample_poly

from songscan import media, scan
from songscan.catalog import Catalog, FingerprintedTrack, Track, TrackMetadata
from songscan.chunks import Chunk, PlanParams
from songscan.config import DEFAULT
from songscan.fingerprint import Peaks, query_peaks, triplets
from songscan.index import pack_postings
from songscan.matcher import Placement, follow, match_peaks, match_tracks
from songscan.media import decode_all
from songscan.scan import (
    ChunkResult,
    SongMatch,
    check_neighbours_songs,
    confirm_weak,
    recognize_clip,
    scan_file,
)
from tests.audio import RATE, synth_song, write_audio

from .conftest import Library, excerpt, mix

SERIAL = DEFAULT.with_workers(1)
RATE_8K = SERIAL.fingerprint.sample_rate_hz


def test_round_trip_offsets_and_timecodes(library: Library, tmp_path: Path) -> None:
    # 0-5 s silence, 5-41 s song 2 from its 10th second, 41-46 s silence, 46-70 s song 3 from 0.
    audio = mix(
        [
            (5.0, excerpt(library.songs[2], 10.0, 36.0)),
            (46.0, excerpt(library.songs[3], 0.0, 24.0)),
        ],
        72.0,
    )
    path = write_audio(tmp_path / "show.flac", audio)
    result = scan_file(path, library.data, PlanParams(), SERIAL)
    assert result.billable_chunks == 6
    by_offset = {c.chunk.start_s: c.songs for c in result.chunks}
    assert [s.track.audio_id for s in by_offset[12.0]] == [2]
    assert [s.track.audio_id for s in by_offset[24.0]] == [2]
    assert [s.track.audio_id for s in by_offset[60.0]] == [3]
    # Song position at the chunk start: song 2 plays its second 10 + (t - 5).
    assert abs(by_offset[12.0][0].timecode_ms - 17_000) <= 50
    assert abs(by_offset[24.0][0].timecode_ms - 29_000) <= 50
    assert abs(by_offset[60.0][0].timecode_ms - 14_000) <= 50
    # The song starts 5 s into chunk 0 and ends 5 s into chunk 3 (36-48 s): the edges lie one
    # spacing of matched hits beyond the first and last hit.
    first = by_offset[0.0][0]
    assert first.track.audio_id == 2
    assert abs(first.start_offset_ms - 5_000) <= 250
    assert first.end_offset_ms >= 11_000
    end_chunk = by_offset[36.0][0]
    assert end_chunk.track.audio_id == 2
    assert abs(end_chunk.end_offset_ms - 5_000) <= 250
    assert end_chunk.start_offset_ms <= 500


def test_unknown_audio_gives_no_match(library: Library, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    unknown = synth_song(99, 30.0)  # music that is not in the catalog
    noise = (rng.normal(0, 0.1, int(30 * RATE))).astype(np.float32)
    silence = np.zeros(int(24 * RATE), dtype=np.float32)
    path = write_audio(tmp_path / "unknown.flac", np.concatenate([unknown, noise, silence]))
    result = scan_file(path, library.data, PlanParams(), SERIAL)
    assert result.billable_chunks == 7
    assert result.matched == []


def test_noisy_lossy_excerpt_is_found(library: Library, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    clip = excerpt(library.songs[1], 20.0, 24.0)
    noisy = clip + rng.normal(0, np.sqrt(np.mean(clip**2) / 10 ** (5 / 10)), clip.shape)
    path = write_audio(tmp_path / "noisy.mp3", noisy.astype(np.float32))
    result = scan_file(path, library.data, PlanParams(), SERIAL)
    assert [c.songs[0].track.audio_id for c in result.matched] == [1, 1]
    assert abs(result.matched[0].songs[0].timecode_ms - 20_000) <= 100


@pytest.mark.parametrize("speed", [1.03, 0.97])
def test_three_percent_speed_change_is_recognised(
    library: Library, tmp_path: Path, speed: float
) -> None:
    clip = excerpt(library.songs[3], 12.0, 30.0)
    up, down = (100, 103) if speed > 1 else (103, 100)
    fast = resample_poly(clip, up, down).astype(np.float32)  # pitch and tempo together
    path = write_audio(tmp_path / "fast.flac", fast)
    result = scan_file(path, library.data, PlanParams(), SERIAL)
    songs = [c.songs[0] for c in result.matched]
    assert len(songs) >= 2 and all(s.track.audio_id == 3 for s in songs)
    assert abs(songs[0].speed - speed) < 0.011
    assert abs(songs[0].timecode_ms - 12_000) <= 200


def played_at(samples: np.ndarray, speed: float, key_lock: bool) -> np.ndarray:
    """`samples` played `speed` times as fast: time-stretched with the pitch kept (FFmpeg's
    atempo), or resampled (pitch and tempo together, a turntable)."""
    if key_lock:
        return time_stretch(samples, RATE, speed)
    return resample_poly(samples, 1000, round(1000 * speed)).astype(np.float32)


@pytest.mark.parametrize(
    ("speed", "key_lock"),
    [(1.06, False), (0.93, False), (1.042, False), (1.07, True), (0.93, True)],
)
def test_speed_change_up_to_eight_percent_is_found_with_its_factor(
    library: Library, tmp_path: Path, speed: float, key_lock: bool
) -> None:
    """A song played up to 8 % fast or slow, with its pitch or without (key lock), is found in
    every chunk it fills, with its speed within 0.5 % and its position at each chunk start as
    accurate as at nominal speed (the song advances `speed` seconds per second)."""
    start_s = 6.0
    clip = played_at(excerpt(library.songs[2], start_s, 50.0), speed, key_lock)
    path = write_audio(tmp_path / "fast.flac", clip)
    result = scan_file(path, library.data, PlanParams(), SERIAL)
    full = [c for c in result.chunks if c.chunk.duration_s == 12.0]
    assert len(full) >= 3
    for c in full:
        assert [s.track.audio_id for s in c.songs] == [2]
        song = c.songs[0]
        assert abs(song.speed / speed - 1) <= 0.005, song.speed
        want_ms = 1000 * (start_s + c.chunk.start_s * speed)
        assert abs(song.timecode_ms - want_ms) <= 100, (c.chunk.start_s, song.timecode_ms)


def test_crossfade_chunk_lists_both_songs(library: Library, tmp_path: Path) -> None:
    """An 8-s crossfade between two songs at their own speeds (as a DJ mixes them): the chunk
    in which both play for several seconds lists both, each at its own speed and position."""
    fade = np.linspace(0.0, 1.0, round(8 * RATE), dtype=np.float32)
    first = played_at(excerpt(library.songs[1], 10.0, 30.0 * 0.95), 0.95, False)[: 26 * RATE]
    second = played_at(excerpt(library.songs[3], 0.0, 30.0 * 1.05), 1.05, True)[: 24 * RATE]
    first[18 * RATE :] *= fade[::-1][: first.shape[0] - 18 * RATE]  # fades out over 18-26 s
    second[: fade.shape[0]] *= fade  # fades in over 18-26 s
    audio = mix([(0.0, first), (18.0, second)], 48.0)
    path = write_audio(tmp_path / "crossfade.flac", audio)
    result = scan_file(path, library.data, PlanParams(), SERIAL)
    by_start = {c.chunk.start_s: c.songs for c in result.chunks}
    both = {s.track.audio_id: s for s in by_start[12.0]}
    assert set(both) == {1, 3}
    # song 3 plays only the chunk's last 6 s, fading in: its speed is less exact there
    assert abs(both[1].speed - 0.95) <= 0.005 and abs(both[3].speed - 1.05) <= 0.01
    assert abs(both[1].timecode_ms - 1000 * (10 + 12 * 0.95)) <= 100
    assert abs(both[3].position_ms - 1000 * (-6 * 1.05)) <= 100  # song 3 starts at 18 s
    assert [s.track.audio_id for s in by_start[0.0]] == [1]
    assert [s.track.audio_id for s in by_start[36.0]] == [3]


def test_a_faint_fading_song_is_listed_where_its_neighbour_predicts_it(
    library: Library, tmp_path: Path
) -> None:
    """Song 1 plays on for 7 s into the second chunk, quiet and fading out, under song 2 and
    noise: too little for the 12 aligned hits of a match anywhere, enough at the place that the
    first chunk's match predicts (`matcher.continuation`). Where song 1 stops at the chunk's
    start, it is not listed."""

    def show(plays_on_s: float) -> Path:
        first = excerpt(library.songs[1], 20.0, 12.0 + plays_on_s).copy()
        fade = first[15 * RATE :]
        fade *= np.linspace(1.0, 0.0, fade.shape[0], dtype=np.float32)
        first[12 * RATE :] *= 0.7
        audio = mix([(0.0, first), (12.0, excerpt(library.songs[2], 0.0, 36.0))], 48.0)
        audio += np.random.default_rng(3).normal(0, 0.05, audio.shape[0]).astype(np.float32)
        return write_audio(tmp_path / f"fade-{plays_on_s:g}.flac", audio)

    def listed(path: Path, min_hits: int) -> list[tuple[int, int]]:
        cfg = replace(SERIAL, match=replace(SERIAL.match, continuation_min_hits=min_hits))
        second = scan_file(path, library.data, PlanParams(), cfg).chunks[1]
        return [(s.track.audio_id, s.position_ms) for s in second.songs]

    fading = show(7.0)
    (best, _), (other, position_ms) = listed(fading, SERIAL.match.continuation_min_hits)
    assert (best, other) == (2, 1)
    assert abs(position_ms - 32_000) <= 100  # song 1 from its 20th second, 12 s on
    # an open search's evidence is not there: only the predicted place finds it
    assert [song for song, _ in listed(fading, SERIAL.match.min_aligned_hits)] == [2]
    assert [song for song, _ in listed(show(0.0), SERIAL.match.continuation_min_hits)] == [2]


def test_plan_parameters_reach_the_scan(library: Library, tmp_path: Path) -> None:
    path = write_audio(tmp_path / "long.flac", np.tile(library.songs[1], 2))
    result = scan_file(
        path, library.data, PlanParams(every=1, skip=2, limit=3, skip_first_seconds=6), SERIAL
    )
    assert [c.chunk.start_s for c in result.chunks] == [6.0, 42.0, 78.0]
    expected_ms = [6_000, 42_000, 18_000]  # the file is the song twice (60 s each)
    for c, want in zip(result.chunks, expected_ms, strict=True):
        assert abs(c.songs[0].timecode_ms - want) <= 100


def test_parallel_equals_serial(library: Library, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    parts = []
    t = 0.0
    for audio_id in (1, 2, 3, 1):
        start = float(rng.uniform(0, 20))
        parts.append((t, excerpt(library.songs[audio_id], start, 35.0)))
        t += 37.5
    audio = mix(parts, t) + rng.normal(0, 0.02, int(t * RATE)).astype(np.float32)
    path = write_audio(tmp_path / "mix.mp3", audio)
    serial = scan_file(
        path,
        library.data,
        PlanParams(),
        replace(SERIAL, scan=replace(SERIAL.scan, max_chunks_per_unit=1000)),
    )
    small_units = replace(DEFAULT.scan, workers=2, max_chunks_per_unit=2)
    parallel = scan_file(path, library.data, PlanParams(), replace(DEFAULT, scan=small_units))
    assert len(serial.matched) >= 8
    assert serial.chunks == parallel.chunks


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths media files are opened at, in order, from here on."""
    paths: list[str] = []
    real_open = media._open

    def counting_open(p: Path) -> object:
        paths.append(str(p))
        return real_open(p)

    monkeypatch.setattr(media, "_open", counting_open)
    return paths


def test_a_serial_scan_opens_the_file_once(
    library: Library, tmp_path: Path, opened: list[str]
) -> None:
    # Seeking in a fresh open of an MP3 reads from the top: a long file opened once per run of
    # chunks would scan in quadratic time. One open serves every run of a serial scan.
    path = write_audio(tmp_path / "long.mp3", excerpt(library.songs[1], 0.0, 40.0))
    units_of_one = replace(SERIAL, scan=replace(SERIAL.scan, max_chunks_per_unit=1))
    result = scan_file(path, library.data, PlanParams(), units_of_one)
    assert result.billable_chunks == 4
    assert [c.songs[0].track.audio_id for c in result.chunks] == [1, 1, 1, 1]
    assert len(opened) == 2  # the probe, and one decode for the four runs


def test_a_scan_given_its_plan_does_not_probe_the_file_again(
    library: Library, tmp_path: Path, opened: list[str]
) -> None:
    # `songscan scan` plans the file to size its pool (start_pool_for) and hands the plan on.
    path = write_audio(tmp_path / "long.mp3", excerpt(library.songs[1], 0.0, 40.0))
    params = PlanParams(limit=2)
    plan = scan.start_pool_for(path, library.data, params, SERIAL)
    assert len(plan) == 2 and len(opened) == 1
    result = scan_file(path, library.data, params, SERIAL, plan=plan)
    assert len(opened) == 2  # the decode alone
    assert result.chunks == scan_file(path, library.data, params, SERIAL).chunks


def test_a_pool_worker_keeps_a_scans_file_open_between_its_runs(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[str]
) -> None:
    path = write_audio(tmp_path / "long.mp3", excerpt(library.songs[1], 0.0, 40.0))

    def held_open() -> bool:
        fds = Path("/proc/self/fd")
        return any(str(path) == os.path.realpath(fd) for fd in fds.iterdir())

    monkeypatch.setattr(scan._WorkerMedia, "IDLE_CLOSE_S", 0.2)
    plan = [Chunk(i, 12.0 * i, 12.0 * (i + 1)) for i in range(3)]
    runs = [(path, library.data, [chunk], SERIAL, None, "scan-1") for chunk in plan]
    found = [scan._worker_unit(run) for run in runs]  # as a worker takes them, in file order
    assert [m[0][1][0].track_id for m in found] == [catalog_id(library, 1)] * 3
    assert len(opened) == 1 and held_open()
    scan._worker_unit((*runs[0][:5], "scan-2"))  # another scan: its own open
    scan._worker_unit(runs[2])  # scans running at once share the pool: each keeps its open
    assert len(opened) == 2
    deadline = time.monotonic() + 5
    while held_open():  # idle: closed, so a finished scan's file is not held
        assert time.monotonic() < deadline
        time.sleep(0.05)


def catalog_id(library: Library, audio_id: int) -> int:
    return Catalog(library.data).get(audio_id).id


def test_standard_recognition_of_a_clip(
    library: Library, tmp_path: Path, opened: list[str]
) -> None:
    path = write_audio(tmp_path / "clip.mp3", excerpt(library.songs[2], 31.0, 40.0))
    songs = recognize_clip(path, library.data)
    assert songs[0].track.audio_id == 2
    assert abs(songs[0].timecode_ms - 31_000) <= 100
    assert songs[0].track.metadata.title == "Song 2"
    assert opened == [str(path)]  # one open is checked, then decoded


def test_repeated_passages_follow_the_song_position(tmp_path: Path) -> None:
    """A song that loops the same 10 s bar: every repetition matches equally well, so each
    chunk's position is taken from continuity with its neighbours."""
    from songscan.catalog import Catalog, TrackMetadata
    from songscan.ingest import IngestItem, ingest

    intro = synth_song(301, 14.0)
    bar = synth_song(302, 10.0)
    song = np.concatenate([intro, *([bar] * 6)])  # 74 s: intro, then the bar six times
    data = tmp_path / "data"
    ref = write_audio(tmp_path / "loop.flac", song)
    ingest(Catalog(data), [IngestItem(ref, TrackMetadata(title="Loop"), 1)], SERIAL, workers=1)
    show = write_audio(tmp_path / "show.flac", excerpt(song, 2.0, 60.0))
    result = scan_file(show, data, PlanParams(), SERIAL)
    positions = [c.songs[0].position_ms for c in result.chunks]
    assert len(positions) == 5 and all(c.songs for c in result.chunks)
    for k, position in enumerate(positions):
        assert abs(position - (2_000 + 12_000 * k)) <= 100, positions


def test_owners_limit_the_tracks_a_query_can_match(library: Library, tmp_path: Path) -> None:
    path = write_audio(tmp_path / "clip.flac", excerpt(library.songs[1], 5.0, 24.0))
    shared = scan_file(path, library.data, PlanParams(), SERIAL, owners=("",))
    assert [c.songs[0].track.audio_id for c in shared.matched] == [1, 1]
    others = scan_file(path, library.data, PlanParams(), SERIAL, owners=("account-7",))
    assert others.matched == [] and others.billable_chunks == 2
    assert recognize_clip(path, library.data, owners=("account-7",)) == []


def _chunk_with(index: int, song: SongMatch | None) -> ChunkResult:
    chunk = Chunk(index, index * 12.0, index * 12.0 + 12.0)
    return ChunkResult(chunk, [song] if song else [])


def test_weak_matches_need_a_confirming_neighbour(library: Library) -> None:
    catalog = Catalog(library.data)
    one, two = catalog.get(1), catalog.get(2)

    def song(track: Track, position_ms: int, weak: bool) -> SongMatch:
        return SongMatch(track, 20, 8, 1.0, max(0, position_ms), position_ms, 0, 12000, weak=weak)

    confident = _chunk_with(1, song(one, 30_000, weak=False))
    goes_on = _chunk_with(2, song(one, 42_200, weak=True))  # the same song, 12 s on: kept
    elsewhere = _chunk_with(2, song(one, 90_000, weak=True))  # same song, wrong place: dropped
    other_song = _chunk_with(2, song(two, 42_000, weak=True))  # another song: dropped
    lonely = _chunk_with(5, song(one, 90_000, weak=True))  # no neighbour: dropped
    kept = confirm_weak([confident, goes_on, lonely], 1.5)
    assert kept[1].songs and not kept[1].songs[0].weak
    assert kept[2].songs == []
    assert confirm_weak([confident, elsewhere], 1.5)[1].songs == []
    assert confirm_weak([confident, other_song], 1.5)[1].songs == []
    # a chunk before the confident one is confirmed the same way (the song starts inside it)
    starts = _chunk_with(0, song(one, 18_100, weak=True))
    assert confirm_weak([starts, confident], 1.5)[0].songs[0].track.id == one.id


def test_songs_are_found_under_a_posting_budget_among_decoys(
    library: Library, tmp_path: Path
) -> None:
    """A large catalog in miniature: 300 decoy tracks hold the library's triplet hashes 30 times
    over at random frames, so every lookup is crowded and none aligns. A budget that serves
    only the rarest tenth of the postings still nominates the song, and its pairs verify it."""
    data = tmp_path / "data"
    shutil.copytree(library.data, data)
    catalog = Catalog(data)
    real, _ = catalog.index.every_posting()
    no_peaks = Peaks(*(np.zeros(0, np.float32),) * 3)
    empty = np.zeros(0, np.uint32)
    decoys = catalog.add(
        [
            FingerprintedTrack(TrackMetadata(title=f"decoy {i}"), empty, empty, 60.0, no_peaks)
            for i in range(300)
        ]
    )
    rng = np.random.default_rng(11)
    crowd = np.tile(real, 30)
    ids = np.array([t.id for t in decoys])[rng.integers(0, 300, crowd.shape[0])]
    catalog.index.add(crowd, pack_postings(ids, rng.integers(0, 2000, crowd.shape[0])))

    path = write_audio(tmp_path / "clip.flac", excerpt(library.songs[3], 20.0, 24.0))
    samples = decode_all(path, RATE_8K)[: 12 * RATE_8K]
    queries = triplets(query_peaks(samples, SERIAL.fingerprint), SERIAL.fingerprint, 8).hashes
    crowded = catalog.index.lookup(queries)[0].shape[0]
    budget = crowded // 10
    assert catalog.index.lookup(queries, budget)[0].shape[0] <= budget
    tight = replace(SERIAL, match=replace(SERIAL.match, max_postings_per_lookup=budget))
    result = scan_file(path, data, PlanParams(), tight)
    assert [c.songs[0].track.audio_id for c in result.matched] == [3, 3]
    assert abs(result.matched[0].songs[0].timecode_ms - 20_000) <= 50


def test_songs_of_neighbouring_chunks_are_checked_where_nothing_was_nominated(
    library: Library,
) -> None:
    """Chunks 1 and 2 play on the song of chunk 0 but come in with no match (as when their
    triplets were lost in noise or a crowded index); chunk 3 is noise. The neighbours' song is
    checked by its pairs: found in chunk 1, then followed into chunk 2; not in the noise."""
    catalog = Catalog(library.data)
    fp = SERIAL.fingerprint
    song = resample_poly(library.songs[1], RATE_8K, RATE).astype(np.float32)
    noise = np.random.default_rng(4).normal(0, 0.1, 12 * RATE_8K).astype(np.float32)
    pieces = [song[i * 12 * RATE_8K : (i + 1) * 12 * RATE_8K] for i in (1, 2, 3)] + [noise]
    peaks = [query_peaks(x, fp) for x in pieces]
    first = match_peaks(peaks[0], catalog, catalog.live_ids(), SERIAL)
    assert first and not first[0].weak
    heard = [
        (0.0, peaks[0], first),
        (12.0, peaks[1], []),
        (24.0, peaks[2], []),
        (36.0, peaks[3], []),
    ]
    matches = check_neighbours_songs(heard, catalog, SERIAL)
    track = catalog.get(1).id
    for i in (1, 2):
        assert matches[i][0].track_id == track and not matches[i][0].weak
        # the song position: chunk i starts 12 s after chunk i - 1 in the song
        shift_frames = 12 * i * fp.frames_per_s
        assert abs(matches[i][0].offset_frames - first[0].offset_frames - shift_frames) <= 2
    assert matches[0] == first and matches[3] == []


def test_a_song_is_followed_by_its_peaks_where_noise_leaves_no_pairs(library: Library) -> None:
    """Chunk 1 plays on the song of chunk 0, 19 dB under noise: no pair survives, but single
    peaks coincide with the song's where chunk 0's match says it plays on. Noise alone, or
    another song, at that place coincides by chance only, and is no match."""
    catalog = Catalog(library.data)
    fp = SERIAL.fingerprint
    rate = fp.sample_rate_hz
    song = resample_poly(library.songs[1], rate, RATE).astype(np.float32)
    other = resample_poly(library.songs[2], rate, RATE).astype(np.float32)
    noise = np.random.default_rng(1).normal(0, 0.1, 12 * rate).astype(np.float32)
    lead_peaks = query_peaks(song[12 * rate : 24 * rate], fp)
    lead = match_peaks(lead_peaks, catalog, catalog.live_ids(), SERIAL)
    assert lead and not lead[0].weak
    track, next_chunk = catalog.get(1).id, 12 * fp.frames_per_s

    quiet = query_peaks(0.3 * song[24 * rate : 36 * rate] + noise, fp)
    assert match_tracks(quiet, catalog, lead[:1], SERIAL) == []
    followed = follow(quiet, catalog, lead[0], next_chunk, SERIAL)
    assert followed is not None and followed.track_id == track
    assert followed.aligned_hits >= SERIAL.match.min_aligned_hits
    assert abs(followed.offset_frames - lead[0].offset_frames - next_chunk) <= 1

    for elsewhere in (noise, other[24 * rate : 36 * rate] + noise):
        assert follow(query_peaks(elsewhere, fp), catalog, lead[0], next_chunk, SERIAL) is None

    matches = check_neighbours_songs([(0.0, lead_peaks, lead), (12.0, quiet, [])], catalog, SERIAL)
    assert matches[1] == [followed]


def test_evidence_below_the_threshold_alone_is_no_match(library: Library, tmp_path: Path) -> None:
    strict = replace(SERIAL, match=replace(SERIAL.match, min_aligned_hits=100_000))
    path = write_audio(tmp_path / "clip.flac", excerpt(library.songs[2], 3.0, 36.0))
    result = scan_file(path, library.data, PlanParams(), strict)
    assert result.billable_chunks == 3 and result.matched == []  # all weak, none confirmed
    assert recognize_clip(path, library.data, strict) == []


def test_a_looped_song_listed_at_a_repeat_is_followed_from_its_true_place(
    tmp_path: Path,
) -> None:
    """A short looped song (four 3-s bars) comes in 7 s into chunk 0 and plays on, fading
    under another song and noise, for 7 s of chunk 1. In chunk 0 every bar lines up about as
    well; listed there at the repeat two bars on, the song would end 1 s into chunk 1, so
    nothing goes on from that place, but it goes on from its true place, one of the listing's
    repeats: chunk 1 lists it there, and chunk 0's listing moves to that place."""
    from songscan.ingest import IngestItem, ingest

    fp = SERIAL.fingerprint
    first, other = synth_song(401, 40.0), synth_song(403, 40.0)
    loop = np.tile(synth_song(402, 3.0), 4)
    data = tmp_path / "data"
    items = [
        IngestItem(write_audio(tmp_path / f"{name}.flac", song), TrackMetadata(title=name), k)
        for k, (name, song) in enumerate((("first", first), ("loop", loop), ("other", other)))
    ]
    assert all(o.error is None for o in ingest(Catalog(data), items, SERIAL, workers=1))
    fading = loop.copy()
    fading[5 * RATE :] *= np.linspace(0.8, 0.0, fading.shape[0] - 5 * RATE, dtype=np.float32)
    audio = mix([(0.0, first[: 7 * RATE]), (7.0, fading), (12.0, other[: 12 * RATE])], 24.0)
    audio += np.random.default_rng(5).normal(0, 0.05, audio.shape[0]).astype(np.float32)
    samples = resample_poly(audio, RATE_8K, RATE).astype(np.float32)
    catalog = Catalog(data)
    track = next(t.id for t in catalog.tracks() if t.metadata.title == "loop")
    peaks = [query_peaks(samples[k * 12 * RATE_8K : (k + 1) * 12 * RATE_8K], fp) for k in (0, 1)]
    found = [match_peaks(p, catalog, catalog.live_ids(), SERIAL) for p in peaks]
    assert track not in [m.track_id for m in found[1] if not m.weak]  # too faint on its own
    true_offset = -7 * fp.frames_per_s
    (listed,) = [m for m in found[0] if m.track_id == track]
    places = [
        Placement(listed.offset_frames, listed.aligned_hits, listed.start_frame, listed.end_frame)
    ]
    places += listed.alternatives
    true = min(places, key=lambda p: abs(p.offset_frames - true_offset))
    assert abs(true.offset_frames - true_offset) <= 2
    repeat = min(places, key=lambda p: abs(p.offset_frames - true_offset - 6 * fp.frames_per_s))
    assert abs(repeat.offset_frames - true_offset - 6 * fp.frames_per_s) <= 2
    at_repeat = replace(
        listed,
        offset_frames=repeat.offset_frames,
        aligned_hits=repeat.aligned_hits,
        alternatives=tuple(p for p in places if p != repeat),
    )
    chunk0 = [at_repeat if m.track_id == track else m for m in found[0]]

    matches = check_neighbours_songs(
        [(0.0, peaks[0], chunk0), (12.0, peaks[1], found[1])], catalog, SERIAL
    )
    (moved,) = [m for m in matches[0] if m.track_id == track]
    assert moved.offset_frames == true.offset_frames
    (goes_on,) = [m for m in matches[1] if m.track_id == track]
    assert abs(goes_on.offset_frames - (true.offset_frames + 12 * fp.frames_per_s)) <= 2
    assert matches[1][0].track_id != track  # the song of chunk 1 stays first
