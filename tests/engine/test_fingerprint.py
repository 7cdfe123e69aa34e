from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import maximum_filter1d
from scipy.signal import resample_poly

from songscan.config import DEFAULT, speed_factor
from songscan.fingerprint import (
    HASH_BITS,
    TRIPLET_BITS,
    find_peaks,
    fold,
    hashes,
    query_peaks,
    reference_hashes,
    reference_peaks,
    reference_triplets,
    running_max,
    spectrogram,
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
    nominal = set(hashes(peaks, CFG, CFG.query_fanout, 0).hashes.tolist())
    stepped = set(hashes(peaks, CFG, CFG.query_fanout, 3).hashes.tolist())
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
    nominal = set(triplets(peaks, CFG, CFG.query_triplet_fanout, 0).hashes.tolist())
    stepped = set(triplets(peaks, CFG, CFG.query_triplet_fanout, 3).hashes.tolist())
    assert len(stepped & wanted) > 4 * max(1, len(nominal & wanted))
