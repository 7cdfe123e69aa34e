"""bench.broadcast: broadcast recordings and their ground truth, on a tiny synthetic corpus."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from bench.broadcast import (
    Broadcast,
    Segment,
    _StreamResampler,
    build_broadcast,
    load_truth,
    repeat_mp3,
)
from scipy.signal import butter, correlate, resample_poly, sosfilt, welch

pytestmark = pytest.mark.xdist_group("bench_broadcast")

SR = 44100
DURATION = 120.0
SEED = 11


@dataclass
class Corpus:
    root: Path
    mono: dict[str, tuple[np.ndarray, int]]  # "role/name" -> (mono float signal, sample rate)


def _write_flac(path: Path, x: np.ndarray, sr: int) -> None:
    layout = "mono" if x.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format="flac") as c:
        st = c.add_stream("flac", rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x, np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = sr
        frame.pts = 0
        for p in st.encode(frame):
            c.mux(p)
        for p in st.encode(None):
            c.mux(p)


def _signal(rng: np.random.Generator, seconds: float, sr: int) -> np.ndarray:
    """Low-passed noise with a slow envelope and a tone: sharp, unambiguous correlation."""
    n = int(seconds * sr)
    sos = butter(4, 3000, fs=sr, output="sos")
    x = sosfilt(sos, rng.standard_normal(n))
    t = np.arange(n) / sr
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
    x += 0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * t)
    return 0.5 * x / np.max(np.abs(x))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(1234)
    mono: dict[str, tuple[np.ndarray, int]] = {}
    spec = [
        ("reference", "r0.flac", 40.0, SR, 2),
        ("reference", "r1.flac", 35.0, SR, 1),
        ("reference", "r2.flac", 40.0, 48000, 2),  # exercises resampling of the source
        ("distractor", "d0.flac", 30.0, SR, 2),
        ("distractor", "d1.flac", 30.0, SR, 1),
        *[("speech", f"s{i}.flac", 0.8 + 0.3 * i, SR, 1) for i in range(6)],
    ]
    for role, name, seconds, sr, channels in spec:
        (root / role).mkdir(exist_ok=True)
        if channels == 2:
            a, b = _signal(rng, seconds, sr), _signal(rng, seconds, sr)
            x = np.stack([a + 0.3 * b, a - 0.3 * b]) / 1.3
        else:
            x = _signal(rng, seconds, sr)[None, :]
        _write_flac(root / role / name, x, sr)
        mono[f"{role}/{name}"] = (x.mean(axis=0), sr)
    return Corpus(root, mono)


def _decode(path: Path) -> np.ndarray:
    out: list[np.ndarray] = []
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=SR)
    with av.open(str(path)) as c:
        for frame in c.decode(c.streams.audio[0]):
            out.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
    out.extend(f.to_ndarray()[0] for f in resampler.resample(None))
    return np.concatenate(out).astype(np.float64)


def _build(corpus: Corpus, out: Path, **kw: object) -> Broadcast:
    params: dict = {"duration_s": DURATION, "seed": SEED, "snr_db": None, "codec": "flac"}
    params.update(kw)
    return build_broadcast(corpus.root, out, **params)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def clean(corpus: Corpus, cache: Path) -> Broadcast:
    return _build(corpus, cache)


def _best_lag(out: np.ndarray, expected_ext: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag (in -max_lag..max_lag) of `out` inside `expected_ext` and its normalised corr."""
    c = correlate(expected_ext, out, "valid")
    cum = np.concatenate([[0.0], np.cumsum(expected_ext**2)])
    energy = cum[len(out) :] - cum[: len(cum) - len(out)]
    corr = c / np.sqrt(energy * np.dot(out, out) + 1e-30)
    i = int(np.argmax(corr))
    return i - max_lag, float(corr[i])


def _check_segment(
    corpus: Corpus, audio: np.ndarray, seg: Segment, speed: float, window_s: float = 1.5
) -> tuple[int, float, float]:
    """Correlates a clean stretch of `seg` in the output with its source at the truth's
    position. Returns (lag, corr, corr assuming speed 1)."""
    x0 = seg.file_start_s + seg.fade_in_s + 0.25
    i0 = math.ceil(x0 * SR)
    n = int(window_s * SR)
    assert (i0 + n) / SR <= seg.file_end_s - seg.fade_out_s
    src, src_sr = corpus.mono[f"reference/{seg.source}"]
    lag = 50

    def expected(step: float) -> np.ndarray:
        pos_s = seg.source_time(i0 / SR, speed) + np.arange(-lag, n + lag) * step / SR
        return np.interp(pos_s * src_sr, np.arange(len(src)), src)

    window = audio[i0 : i0 + n]
    got_lag, corr = _best_lag(window, expected(speed), lag)
    _, corr_unit_speed = _best_lag(window, expected(1.0), lag)
    return got_lag, corr, corr_unit_speed


def _catalog(b: Broadcast, min_s: float = 2.5) -> list[Segment]:
    segs = [
        s
        for s in b.truth.segments
        if s.kind == "catalog"
        and s.file_end_s - s.file_start_s - s.fade_in_s - s.fade_out_s > min_s
    ]
    assert segs, "the test programme should hold a catalog segment"
    return segs


def test_truth_tiles_the_file_and_file_decodes_to_its_duration(clean: Broadcast) -> None:
    t = clean.truth
    assert t.duration_s == DURATION and t.speed == 1.0 and t.codec == "flac"
    assert load_truth(clean.truth_path) == t
    segs = sorted(t.segments, key=lambda s: s.file_start_s)
    assert segs[0].file_start_s == 0.0
    assert abs(max(s.file_end_s for s in segs) - t.duration_s) < 1 / SR
    assert {s.kind for s in segs} >= {"catalog", "speech"}
    reach = 0.0
    for prev, s in itertools.pairwise(segs):
        reach = max(reach, prev.file_end_s)
        assert s.file_start_s <= reach + 1e-9, "gap in the truth"
        overlap = prev.file_end_s - s.file_start_s
        if overlap > 1e-9:  # a crossfade: music on both sides, matching fades
            assert {prev.kind, s.kind} <= {"catalog", "distractor"}
            assert overlap <= 6 + 1e-6
            assert prev.fade_out_s == pytest.approx(overlap) == s.fade_in_s
        if s.kind == "silence":
            assert s.source is None
        else:
            assert s.source and s.source.endswith(".flac")
    assert len(_decode(clean.path)) == round(t.duration_s * SR)


def test_catalog_audio_matches_source_at_truth_position(corpus: Corpus, clean: Broadcast) -> None:
    audio = _decode(clean.path)
    for seg in _catalog(clean):
        lag, corr, _ = _check_segment(corpus, audio, seg, 1.0)
        assert lag == 0, (seg, lag)
        assert corr > 0.99, (seg, corr)


def test_mp3_keeps_the_truth_aligned(corpus: Corpus, cache: Path) -> None:
    b = _build(corpus, cache, codec="mp3", bitrate_kbps=96)
    audio = _decode(b.path)
    assert abs(len(audio) - round(b.truth.duration_s * SR)) <= 1152
    for seg in _catalog(b):
        lag, corr, _ = _check_segment(corpus, audio, seg, 1.0)
        assert abs(lag) <= 1 and corr > 0.95, (seg, lag, corr)


def test_speed_shrinks_the_file_and_truth_maps_positions(
    corpus: Corpus, cache: Path, clean: Broadcast
) -> None:
    speed = 1.05
    b = _build(corpus, cache, speed=speed)
    t = b.truth
    assert t.speed == pytest.approx(speed, abs=1e-12)
    assert t.duration_s == pytest.approx(DURATION / speed, abs=1 / SR)
    audio = _decode(b.path)
    assert len(audio) == round(t.duration_s * SR)
    # Same programme as at speed 1, every file time divided by the speed.
    assert len(t.segments) == len(clean.truth.segments)
    for s, s1 in zip(t.segments, clean.truth.segments, strict=True):
        assert (s.kind, s.source, s.source_start_s) == (s1.kind, s1.source, s1.source_start_s)
        assert s.file_start_s == pytest.approx(s1.file_start_s / speed, abs=1e-9)
        assert s.file_end_s == pytest.approx(s1.file_end_s / speed, abs=1e-9)
    for seg in _catalog(b):
        lag, corr, corr_unit_speed = _check_segment(corpus, audio, seg, t.speed)
        assert abs(lag) <= 1 and corr > 0.98, (seg, lag, corr)
        assert corr_unit_speed < 0.5, "the speed change should be audible to a correlator"


def test_snr_is_as_requested(corpus: Corpus, cache: Path) -> None:
    clean = _decode(_build(corpus, cache, codec="wav").path)
    for noise, snr in (("pink", 10.0), ("white", 0.0)):
        b = _build(corpus, cache, codec="wav", snr_db=snr, noise=noise)
        assert b.truth.snr_db == snr and b.truth.noise == noise and b.truth.clipped_samples == 0
        noisy = _decode(b.path)
        assert len(noisy) == len(clean)
        n = noisy - clean
        measured = 10 * math.log10(np.mean(clean**2) / np.mean(n**2))
        assert measured == pytest.approx(snr, abs=0.2), noise
        power_db = 10 * math.log10(np.mean(clean**2))
        assert b.truth.signal_power_db == pytest.approx(power_db, abs=0.05)
        f, psd = welch(n[: 30 * SR], fs=SR, nperseg=8192)
        octave = [float(np.sum(psd[(f >= lo) & (f < 2 * lo)])) for lo in (200.0, 6400.0)]
        tilt_db = 10 * math.log10(octave[1] / octave[0])  # pink: ~0 dB; white: +15 dB
        assert abs(tilt_db) < 1.5 if noise == "pink" else tilt_db > 13


def test_same_seed_same_truth_and_cache(corpus: Corpus, clean: Broadcast, tmp_path: Path) -> None:
    again = _build(corpus, tmp_path / "a")
    assert again.truth.to_json() == clean.truth.to_json()
    assert again.path.read_bytes() == clean.path.read_bytes()
    mtime = again.path.stat().st_mtime_ns
    assert _build(corpus, tmp_path / "a").path.stat().st_mtime_ns == mtime  # reused
    other = _build(corpus, tmp_path / "b", seed=SEED + 1)
    assert other.truth.segments != clean.truth.segments
    wav = _build(corpus, tmp_path / "c", codec="wav")  # codec does not change the programme
    assert wav.truth.segments == clean.truth.segments


def test_stream_resampler_matches_one_shot() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(300_001).astype(np.float32)
    for up, down in ((100, 103), (20, 21), (1, 2), (3, 2)):
        cuts = np.sort(rng.integers(0, len(x), 12))
        blocks = np.split(x, cuts)
        rs = _StreamResampler(up, down)
        got = np.concatenate(list(rs.run(blocks, len(x))))
        want = resample_poly(x, up, down, window=rs.h)
        assert len(got) == len(want)
        assert np.max(np.abs(got - want)) < 1e-5, (up, down)


def test_repeat_mp3_concatenates_without_reencoding(corpus: Corpus, cache: Path) -> None:
    b = _build(corpus, cache, codec="mp3", duration_s=30.0)
    times = 4
    r = repeat_mp3(b.path, cache / "rep.mp3", times)
    t = r.truth
    period = round(t.repeat_period_s * SR)
    content = round(b.truth.duration_s * SR)
    assert t.repeat_times == times and t.duration_s == ((times - 1) * period + content) / SR
    with av.open(str(r.path)) as c:
        assert c.duration / 1e6 == pytest.approx(t.duration_s, abs=1152 / SR)
    src = _decode(b.path)
    audio = _decode(r.path)
    assert len(audio) == (times - 1) * period + content
    m = 2 * 1152  # the decoder's state settles within two frames of a junction
    for k in range(times):
        np.testing.assert_allclose(audio[k * period + m : k * period + content], src[m:], atol=1e-6)
    assert len(t.segments) == times * len(b.truth.segments) + times - 1
    assert max(s.file_end_s for s in t.segments) == pytest.approx(t.duration_s, abs=1 / SR)
    assert r.path.stat().st_size < times * b.path.stat().st_size
