"""A listener's window buffer: the windows and heads of joining every decoded block, each given
as soon as the block that completes it has been added, from one buffer."""

from __future__ import annotations

import numpy as np
import pytest

from songscan.streams.windows import WindowBuffer

WINDOW_N, HEAD_N = 1000, 300


def blocks_of(audio: np.ndarray, rng: np.random.Generator, largest: int) -> list[np.ndarray]:
    cuts = np.cumsum(rng.integers(1, largest + 1, size=audio.shape[0]))
    return np.split(audio, cuts[cuts < audio.shape[0]])


@pytest.mark.parametrize("largest", [1, 7, 209, 299, 1000, 2500])  # block sizes up to this
def test_windows_and_heads_are_those_of_the_joined_audio(largest: int) -> None:
    rng = np.random.default_rng(largest)
    audio = rng.standard_normal(10_500).astype(np.float32)
    buffer = WindowBuffer(WINDOW_N, HEAD_N)
    cuts: list[tuple[int, bool, np.ndarray]] = []  # (samples added so far, whole, a copy)
    added = 0
    for block in blocks_of(audio, rng, largest):
        added += block.shape[0]
        cuts += [(added, cut.whole, cut.samples.copy()) for cut in buffer.add(block)]
    # each window's head, then the window: ten windows, the last 500 samples still in progress
    expected = []
    for i in range(11):
        lo = i * WINDOW_N
        expected.append((lo + HEAD_N, False, audio[lo : lo + HEAD_N]))
        if i < 10:
            expected.append((lo + WINDOW_N, True, audio[lo : lo + WINDOW_N]))
    assert [whole for _, whole, _ in cuts] == [whole for _, whole, _ in expected]
    for (added_at, _, got), (due, _, want) in zip(cuts, expected, strict=True):
        np.testing.assert_array_equal(got, want)
        assert due <= added_at < due + largest  # given by the block that completed it


def test_cuts_are_views_of_one_buffer() -> None:
    buffer = WindowBuffer(WINDOW_N, HEAD_N)
    first = [cut.samples for cut in buffer.add(np.ones(WINDOW_N, dtype=np.float32))]
    second = [cut.samples for cut in buffer.add(np.zeros(WINDOW_N, dtype=np.float32))]
    assert all(np.shares_memory(a, b) for a, b in zip(first, second, strict=True))


def test_reset_drops_the_window_in_progress() -> None:
    buffer = WindowBuffer(WINDOW_N, HEAD_N)
    assert [c.whole for c in buffer.add(np.ones(HEAD_N + 10, dtype=np.float32))] == [False]
    buffer.reset()
    fresh = np.arange(WINDOW_N, dtype=np.float32)
    cuts = [(c.whole, c.samples.copy()) for c in buffer.add(fresh)]
    assert [whole for whole, _ in cuts] == [False, True]  # a head again, then the window
    np.testing.assert_array_equal(cuts[1][1], fresh)


def test_a_head_as_long_as_the_window_is_refused() -> None:
    with pytest.raises(ValueError):
        WindowBuffer(WINDOW_N, WINDOW_N)
