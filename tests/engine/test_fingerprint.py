from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from bench.broadcast import time_stretch
from scipy.fft import rfft
from scipy.ndimage import maximum_filter1d
from scipy.signal import resample_poly

from songscan import fingerprint
from songscan.config import DEFAULT, Speed, speed_factor
from songscan.fingerprint import (
    HASH_BITS,
    SPECTROGRAM_ROWS,
    STREAM_SEGMENT_BLOCKS,
    TRIPLET_BITS,
    Peaks,
    find_peaks,
    fold,
    hashes,
    query_peaks,
    reference_hashes,
    reference_peaks,
    reference_triplets,
    running_max,
    spectrogram,
    streamed_reference_peaks,
    triplet_keys,
    triplets,
)
from tests.audio import synth_song

CFG = DEFAULT.fingerprint


@pytest.mark.parametrize("shape", [(376, 460), (5, 7), (3, 30), (40, 2)])
@pytest.mark.parametrize(("radius", "axis"), [(4, 0), (12, 1), (1, 0), (30, 1)])
def test_running_max_equals_scipy(shape: tuple[int, int], radius: int, axis: int) -> None:
    a = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(
        running_max(a, radius, axis), maximum_filter1d(a, 2 * radius + 1, axis=axis)
    )


@pytest.mark.parametrize("frames", [1, SPECTROGRAM_ROWS, SPECTROGRAM_ROWS + 1, 309])
def test_spectrogram_in_batches_is_the_whole_array_one(frames: int) -> None:
    """The spectrogram is made a batch of frames at a time: bit for bit the STFT of all the
    frames at once (309 frames: a 10-s clip, whose last batch is short)."""
    song = resample_poly(synth_song(5, 12.0), 8000, 22050).astype(np.float32)
    noisy = song + np.random.default_rng(3).normal(0, 0.05, song.shape).astype(np.float32)
    samples = noisy[: (frames - 1) * CFG.hop + CFG.n_fft]
    windowed = np.lib.stride_tricks.sliding_window_view(samples, CFG.n_fft)[:: CFG.hop]
    window = np.hanning(CFG.n_fft + 2)[1:-1].astype(np.float32)
    band = rfft(windowed * window, axis=1)[:, slice(*fingerprint._bin_range(CFG))]
    whole = 0.5 * np.log(band.real**2 + band.imag**2 + np.float32(1e-14))
    made = spectrogram(samples, CFG)
    assert made.shape == whole.shape and made.shape[0] == frames and made.dtype == np.float32
    np.testing.assert_array_equal(made, whole)


def test_silence_has_no_peaks_and_no_hashes() -> None:
    silence = np.zeros(8000 * 12, dtype=np.float32)
    assert len(find_peaks(spectrogram(silence, CFG), CFG, CFG.query_peaks_per_s)) == 0
    assert len(reference_hashes(silence, CFG)) == 0


def test_density_and_hash_range() -> None:
    song = resample_poly(synth_song(4, 30.0), 8000, 22050).astype(np.float32)
    peaks = query_peaks(song, CFG)
    assert 10 * 30 < len(peaks) <= CFG.query_peaks_per_s * 30 * 1.1
    found = reference_hashes(song, CFG)
    assert len(found) > 30 * 20
    assert int(found.hashes.max()) < (1 << HASH_BITS)
    assert np.all(np.diff(np.rint(peaks.time_frames)) >= 0)  # sorted by frame


def test_speed_step_rehash_recovers_the_reference_hashes() -> None:
    """A song played 3 % fast, re-hashed at step 3, shares most hashes with the original."""
    song = resample_poly(synth_song(9, 30.0), 8000, 22050).astype(np.float32)
    fast = resample_poly(song, 100, 103).astype(np.float32)
    ref = set(reference_hashes(song, CFG).hashes.tolist())
    peaks = query_peaks(fast, CFG)
    nominal = set(hashes(peaks, CFG, CFG.query_fanout).hashes.tolist())
    stepped = set(hashes(peaks, CFG, CFG.query_fanout, Speed(3, 3)).hashes.tolist())
    assert speed_factor(3) == pytest.approx(1.0303, abs=1e-4)
    assert len(stepped & ref) > 4 * len(nominal & ref)


def test_triplets_are_specific_and_follow_a_speed_step() -> None:
    song = resample_poly(synth_song(9, 30.0), 8000, 22050).astype(np.float32)
    ref = reference_triplets(reference_peaks(song, CFG), CFG)
    assert len(ref) > 30 * 20 and int(ref.hashes.max()) < (1 << TRIPLET_BITS)
    # The same peaks' triplets are their unfolded keys, folded; distinct keys stay distinct.
    keys = triplet_keys(reference_peaks(song, CFG), CFG, CFG.ref_triplet_fanout).hashes
    np.testing.assert_array_equal(fold(keys), ref.hashes)
    assert len(np.unique(ref.hashes)) == len(np.unique(keys))
    # Played 3 % fast and re-hashed at step 3, the query shares its triplets with the reference.
    fast = resample_poly(song, 100, 103).astype(np.float32)
    peaks = query_peaks(fast, CFG)
    wanted = set(ref.hashes.tolist())
    nominal = set(triplets(peaks, CFG, CFG.query_triplet_fanout).hashes.tolist())
    stepped = set(triplets(peaks, CFG, CFG.query_triplet_fanout, Speed(3, 3)).hashes.tolist())
    assert len(stepped & wanted) > 4 * max(1, len(nominal & wanted))


def test_speed_triplets_are_every_speeds_triplets_at_once() -> None:
    """The speed pass's triplets, made for all its speeds at once (pitch and tempo together,
    and key lock), are each speed's own `triplets`, in order; and a song played 6 % fast with
    its pitch, or time-stretched by 6 % without, shares its triplets with the reference at
    the speed that undoes it and far fewer at nominal speed."""
    song = resample_poly(synth_song(9, 30.0), 8000, 22050).astype(np.float32)
    peaks = query_peaks(song, CFG)
    speeds = DEFAULT.match.speeds
    found, step_of = fingerprint.speed_triplets(peaks, CFG, CFG.speed_triplet_fanout, speeds)
    assert np.all(np.diff(step_of) >= 0)
    for i, speed in enumerate(speeds):
        own = triplets(peaks, CFG, CFG.speed_triplet_fanout, speed)
        np.testing.assert_array_equal(found.hashes[step_of == i], own.hashes)
        np.testing.assert_array_equal(found.anchor_frames[step_of == i], own.anchor_frames)
        np.testing.assert_array_equal(found.end_frames[step_of == i], own.end_frames)
    wanted = set(reference_triplets(reference_peaks(song, CFG), CFG).hashes.tolist())
    fast = resample_poly(song, 100, 106).astype(np.float32)
    stretched = time_stretch(song, 8000, 1.06)
    for played, speed in ((fast, Speed(6, 6)), (stretched, Speed(6, 0))):
        query = query_peaks(played, CFG)
        nominal = set(triplets(query, CFG, CFG.query_triplet_fanout).hashes.tolist())
        at_speed = set(triplets(query, CFG, CFG.query_triplet_fanout, speed).hashes.tolist())
        assert len(at_speed & wanted) > 3 * max(1, len(nominal & wanted))


def as_blocks(samples: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, samples.shape[0], size):
        yield samples[i : i + size]


def assert_same_peaks(a: Peaks, b: Peaks) -> None:
    for name in ("time_frames", "freq_hz", "strength"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


SEGMENT_SAMPLES = 31 * STREAM_SEGMENT_BLOCKS * CFG.hop  # a streamed segment's frames, in samples


@pytest.mark.parametrize("block", [16384, 1, 997, SEGMENT_SAMPLES, 10**7])
def test_streamed_reference_peaks_are_the_whole_array_ones(block: int) -> None:
    """Streaming is exact (peaks, hence triplets and postings), whatever the blocks, at
    segment boundaries (a peak's time neighbourhood and its one-second selection block span
    them) and for lengths around them."""
    song = resample_poly(synth_song(12, 140.0), 8000, 22050).astype(np.float32)
    lengths = [song.shape[0], SEGMENT_SAMPLES + CFG.n_fft - CFG.hop, 2 * SEGMENT_SAMPLES + 7]
    lengths += [SEGMENT_SAMPLES + CFG.n_fft + 3 * CFG.hop, CFG.n_fft + 2 * CFG.hop, 900]
    if block not in (1, 997):  # the slow block sizes: the whole song only
        lengths += [SEGMENT_SAMPLES, SEGMENT_SAMPLES + CFG.n_fft, CFG.n_fft, CFG.n_fft + CFG.hop]
    else:
        lengths = lengths[:1]
    for n in lengths:
        streamed = streamed_reference_peaks(as_blocks(song[:n], block), CFG)
        assert_same_peaks(streamed, reference_peaks(song[:n], CFG))
    whole = reference_peaks(song, CFG)
    streamed = streamed_reference_peaks(as_blocks(song, block), CFG)
    assert len(whole) > 1000
    for edge in (31 * STREAM_SEGMENT_BLOCKS, 2 * 31 * STREAM_SEGMENT_BLOCKS):  # both boundaries
        assert np.any(np.abs(whole.time_frames - edge) <= CFG.peak_time_radius_frames)
    np.testing.assert_array_equal(
        reference_triplets(streamed, CFG).hashes, reference_triplets(whole, CFG).hashes
    )


@pytest.mark.parametrize("piece", [17, 100, 500])
def test_reference_triplets_made_in_pieces_are_the_whole_ones(
    piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    song = resample_poly(synth_song(14, 120.0), 8000, 22050).astype(np.float32)
    peaks = reference_peaks(song, CFG)
    whole = triplets(peaks, CFG, CFG.ref_triplet_fanout)
    monkeypatch.setattr(fingerprint, "TRIPLET_PIECE_ANCHORS", piece)
    for n in (len(peaks), 2 * piece, 2 * piece - 1, 3 * piece + 5):
        cut = Peaks(peaks.time_frames[:n], peaks.freq_hz[:n], peaks.strength[:n])
        expected = whole if n == len(peaks) else triplets(cut, CFG, CFG.ref_triplet_fanout)
        found = reference_triplets(cut, CFG)
        for name in ("hashes", "anchor_frames", "end_frames"):
            np.testing.assert_array_equal(getattr(found, name), getattr(expected, name))
    assert len(peaks) > 2 * piece  # more than one piece
