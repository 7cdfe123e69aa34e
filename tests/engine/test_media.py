from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from songscan import media
from songscan.errors import DecodeFailed
from tests.audio import synth_song, write_audio


@pytest.fixture(scope="module")
def song_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    song = synth_song(11, 45.0)
    return {
        suffix: write_audio(root / f"song{suffix}", song) for suffix in (".flac", ".mp3", ".wav")
    }


@pytest.mark.parametrize("suffix", [".flac", ".mp3", ".wav"])
def test_decode_length_and_rate(song_files: dict[str, Path], suffix: str) -> None:
    samples = media.decode_all(song_files[suffix], 8000)
    assert samples.dtype == np.float32
    assert abs(samples.shape[0] - 45 * 8000) <= 8000 * 0.06  # MP3 may pad a frame
    assert 0.01 < np.abs(samples).max() <= 1.0


@pytest.mark.parametrize("suffix", [".flac", ".mp3"])
@pytest.mark.parametrize("start", [3.0, 17.25, 30.0])
def test_seeking_decode_matches_decode_from_the_top(
    song_files: dict[str, Path], suffix: str, start: float
) -> None:
    whole = media.decode_all(song_files[suffix], 8000)
    part = media.decode_all(song_files[suffix], 8000, start_s=start, end_s=start + 10.0)
    i = media.sample_index(start, 8000)
    assert part.shape[0] == 80_000
    np.testing.assert_array_equal(part, whole[i : i + part.shape[0]])


@pytest.mark.parametrize("suffix", [".flac", ".mp3"])
def test_one_open_media_decodes_ranges_in_any_order_as_fresh_opens_do(
    song_files: dict[str, Path], suffix: str
) -> None:
    ranges = [(17.25, 27.25), (30.0, 40.0), (3.0, 13.0), (0.0, 10.0), (30.0, 35.0), (1.0, 6.0)]
    with media.Media(song_files[suffix]) as opened:
        for start, end in ranges:
            again = np.concatenate(list(opened.decode(8000, start_s=start, end_s=end)))
            fresh = media.decode_all(song_files[suffix], 8000, start_s=start, end_s=end)
            np.testing.assert_array_equal(again, fresh)


@pytest.mark.parametrize("suffix", [".flac", ".wav"])
def test_batched_resampling_gives_the_samples_of_frame_by_frame_resampling(
    song_files: dict[str, Path], suffix: str
) -> None:
    # decode() hands the resampler a quarter second of frames at a time; the resampler is a
    # stream filter, so the output is that of resampling every decoded frame on its own (by
    # PyAV's own resampler: the same libswresample filter).
    resampler = av.AudioResampler(format="flt", layout="mono", rate=8000)
    with av.open(str(song_files[suffix])) as container:
        frames = [f for f in container.decode(audio=0)] + [None]
        one_by_one = np.concatenate(
            [out.to_ndarray()[0] for f in frames for out in resampler.resample(f)]
        )
    np.testing.assert_array_equal(media.decode_all(song_files[suffix], 8000), one_by_one)


def test_probe(song_files: dict[str, Path]) -> None:
    info = media.probe(song_files[".flac"])
    assert info.duration_s == pytest.approx(45.0, abs=0.01)
    assert info.channels == 1


def test_not_audio(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp3"
    text.write_text("this is not an mp3 file\n" * 50)
    with pytest.raises(DecodeFailed):
        media.probe(text)
    with pytest.raises(DecodeFailed):
        media.decode_all(text, 8000)


def test_empty_and_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(DecodeFailed, match="empty"):
        media.probe(empty)
    with pytest.raises(DecodeFailed, match="no such file"):
        media.probe(tmp_path / "missing.mp3")


def test_truncated_file_decodes_what_is_there(song_files: dict[str, Path], tmp_path: Path) -> None:
    data = song_files[".mp3"].read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 3])
    samples = media.decode_all(cut, 8000)
    assert 10 * 8000 < samples.shape[0] < 20 * 8000


def test_header_only_file_fails_cleanly(song_files: dict[str, Path], tmp_path: Path) -> None:
    stub = tmp_path / "stub.flac"
    stub.write_bytes(song_files[".flac"].read_bytes()[:200])
    with pytest.raises(DecodeFailed):
        media.decode_all(stub, 8000)


def _tone_level_db(tmp_path: Path, freq_hz: float) -> float:
    """The level (dB, against the input's) of a 44.1-kHz tone after decoding to 8 kHz."""
    t = np.arange(44100 * 3) / 44100
    tone = write_audio(
        tmp_path / f"tone{freq_hz:.0f}.flac", 0.5 * np.sin(2 * np.pi * freq_hz * t), 44100
    )
    out = media.decode_all(tone, 8000)[8000:-8000]
    return float(20 * np.log10(np.sqrt(np.mean(out**2)) / (0.5 / np.sqrt(2))))


def test_the_resampler_keeps_the_fingerprint_band_and_stops_what_would_fold_into_it(
    tmp_path: Path,
) -> None:
    # Flat where the fingerprint looks (up to 3 kHz within 0.5 dB, 3.5 kHz within 3 dB) and what
    # lies far enough above 4 kHz to fold back into the band at 8 kHz (5 kHz folds to 3 kHz) at
    # least 40 dB down. A cheaper resampling filter fails this (libswresample's filter_size 8:
    # 5 kHz at -19 dB), and it cost recall (BENCHMARKS.md, the decode notes).
    for freq_hz in (440.0, 1000.0, 3000.0):
        assert _tone_level_db(tmp_path, freq_hz) > -0.5
    assert _tone_level_db(tmp_path, 3500.0) > -3.0
    assert _tone_level_db(tmp_path, 5000.0) < -40.0


def test_decoding_starts_no_threads(song_files: dict[str, Path]) -> None:
    # PyAV's AudioResampler runs its filter graph with a thread per core, started and joined on
    # every decode; songscan's graph has one thread, the caller's.
    before = len(os.listdir("/proc/self/task"))
    blocks = media.decode(song_files[".mp3"], 8000)
    next(blocks)
    during = len(os.listdir("/proc/self/task"))
    blocks.close()
    assert during == before
