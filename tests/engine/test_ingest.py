"""Reference ingest: streamed (memory flat in the track's length) and identical to the
whole-array fingerprint; what a header claims is checked before anything is decoded."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from songscan.accounts.plans import ConfigError
from songscan.chunks import PlanParams
from songscan.config import DEFAULT, EngineConfig, MediaLimits
from songscan.errors import AudioTooLong, NotARecording
from songscan.fingerprint import reference_peaks, reference_triplets
from songscan.ingest import IngestItem, fingerprint_file
from songscan.media import decode_all
from songscan.scan import recognize_clip, scan_file
from tests.audio import synth_song

CFG = DEFAULT.fingerprint


def write_8k_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def song_8k() -> np.ndarray:
    return resample_poly(synth_song(41, 60.0), 8000, 22050).astype(np.float32)


def assert_whole_array_fingerprint(path: Path) -> None:
    """Ingest's streamed peaks and triplets are those of the whole decoded array."""
    track = fingerprint_file(IngestItem(path), DEFAULT)
    samples = decode_all(path, CFG.sample_rate_hz)
    whole = reference_peaks(samples, CFG)
    np.testing.assert_array_equal(track.peaks.time_frames, whole.time_frames)
    np.testing.assert_array_equal(track.peaks.freq_hz, whole.freq_hz)
    np.testing.assert_array_equal(track.peaks.strength, whole.strength)
    assert track.duration_s == samples.shape[0] / CFG.sample_rate_hz
    assert len(whole) > 100


def test_ingest_fingerprints_as_the_whole_array(tmp_path: Path, song_8k: np.ndarray) -> None:
    path = write_8k_wav(tmp_path / "song.wav", np.tile(song_8k, 3))  # three segments and more
    assert_whole_array_fingerprint(path)
    track = fingerprint_file(IngestItem(path), DEFAULT)
    expected = reference_triplets(reference_peaks(decode_all(path, 8000), CFG), CFG)
    assert track.hashes.shape == expected.hashes.shape


@pytest.mark.slow
def test_ingest_fingerprints_corpus_files_as_the_whole_array() -> None:
    from bench.broadcast import find_corpus

    files = sorted((find_corpus() / "reference").glob("*.ogg"))
    assert len(files) >= 3
    for path in files[:3]:
        assert_whole_array_fingerprint(path)


# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's (this test process's) peak.
PEAK_RSS = """
import sys
from pathlib import Path
from songscan.allocator import tune_allocator
from songscan.config import DEFAULT
from songscan.ingest import IngestItem, fingerprint_file
tune_allocator()
fingerprint_file(IngestItem(Path(sys.argv[1])), DEFAULT)
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""


def peak_rss_mb(path: Path) -> float:
    """Peak RSS of a fresh process that fingerprints `path` (tuned as ingest's workers are)."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1]) / 1024


def test_ingest_memory_does_not_grow_with_the_track(tmp_path: Path, song_8k: np.ndarray) -> None:
    """Two minutes and ten: the same peak (the whole-array path took 150 MB more for ten, and
    420 MB more again for thirty; streamed, thirty minutes peak where ten do)."""
    short = peak_rss_mb(write_8k_wav(tmp_path / "short.wav", np.tile(song_8k, 2)))
    long = peak_rss_mb(write_8k_wav(tmp_path / "long.wav", np.tile(song_8k, 10)))
    assert long - short < 20, (short, long)


def test_a_sample_rate_no_recording_has_is_refused_from_the_header(tmp_path: Path) -> None:
    """A 1-Hz WAV: 40,000 samples claim 40,000 s, which the resampler would make 320 million."""
    path = write_8k_wav(tmp_path / "1hz.wav", np.zeros(40_000, dtype=np.float32), rate=1)
    with pytest.raises(NotARecording, match="1 Hz"):
        fingerprint_file(IngestItem(path), DEFAULT)
    with pytest.raises(NotARecording):
        scan_file(path, tmp_path / "data", PlanParams(), DEFAULT.with_workers(1))
    with pytest.raises(NotARecording):
        recognize_clip(path, tmp_path / "data")
    assert NotARecording.code == 500


def test_a_reference_over_the_limit_is_refused(tmp_path: Path, song_8k: np.ndarray) -> None:
    path = write_8k_wav(tmp_path / "song.wav", song_8k)
    cfg = EngineConfig(limits=MediaLimits(max_reference_s=59.0))
    with pytest.raises(AudioTooLong, match="max_reference_s"):
        fingerprint_file(IngestItem(path), cfg)
    assert AudioTooLong.code == 400
    fits = EngineConfig(limits=MediaLimits(max_reference_s=60.0))
    assert fingerprint_file(IngestItem(path), fits).peaks


def test_media_limits_from_songscan_toml() -> None:
    cfg = EngineConfig.from_config({"media": {"max_reference_s": 600, "min_sample_rate_hz": 8000}})
    assert cfg.limits == MediaLimits(min_sample_rate_hz=8000, max_reference_s=600)
    assert EngineConfig.from_config({}) == DEFAULT
    for bad in ({"max_reference": 1}, {"min_sample_rate_hz": 4000.5}, {"max_reference_s": 0}):
        with pytest.raises(ConfigError, match=r"\[media\]"):
            EngineConfig.from_config({"media": bad})


def songscan(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "songscan.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_line_takes_the_limits_from_songscan_toml(
    tmp_path: Path, song_8k: np.ndarray
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "songscan.toml").write_text("[media]\nmax_reference_s = 30\n")
    song = write_8k_wav(tmp_path / "song.wav", song_8k)
    proc = songscan("--data", data, "add", song)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "30 s long at most ([media] max_reference_s)" in proc.stderr
    slow = write_8k_wav(tmp_path / "1hz.wav", np.zeros(4000, dtype=np.float32), rate=1)
    proc = songscan("--data", data, "scan", slow)
    assert proc.returncode != 0 and "error (500)" in proc.stderr and "1 Hz" in proc.stderr
