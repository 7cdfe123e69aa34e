"""A stream's decoded audio cut into consecutive windows, in one buffer allocated once.

The decoder gives small blocks (an MP3 frame resampled: some 200 samples, 40 a second). Each
listener copies them into one float32 array of a window's length as they come, and hands out
views of it: the head of the window in progress once it has its first seconds, then the whole
window. Keeping the blocks and joining them every window instead (as the listener once did)
left ~460 small arrays alive per listener and a window-sized join kept alive by its rest, for
12 s each, allocated between the recognitions' large short-lived arrays by a hundred listener
threads sharing a few malloc arenas: the arenas fragmented and the server's memory grew by
~20 MB a minute at 200 streams (BENCHMARKS.md, live streams).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cut:
    """A view of the buffer: valid until the next `Cut` is asked for."""

    samples: np.ndarray
    whole: bool  # the whole window; else the head of the window in progress


class WindowBuffer:
    """Consecutive windows of `window_n` samples, each after its first `head_n` samples as a
    head (`head_n` < `window_n`)."""

    def __init__(self, window_n: int, head_n: int) -> None:
        if not 0 < head_n < window_n:
            raise ValueError("a window's head must be shorter than the window")
        self.window_n = window_n
        self.head_n = head_n
        self._buf = np.empty(window_n, dtype=np.float32)
        self._filled = 0
        self._head_given = False

    def reset(self) -> None:
        """Drop the window in progress (the stream reconnects: its audio does not go on)."""
        self._filled = 0
        self._head_given = False

    def add(self, block: np.ndarray) -> Iterator[Cut]:
        """Copy `block` in; yields the heads and windows it completes, in order. The buffer is
        written again once the next cut is asked for: use (or copy) each cut before."""
        done, size = 0, block.shape[0]
        while done < size:
            take = min(size - done, self.window_n - self._filled)
            self._buf[self._filled : self._filled + take] = block[done : done + take]
            self._filled += take
            done += take
            if self._filled >= self.head_n and not self._head_given:
                self._head_given = True
                yield Cut(self._buf[: self.head_n], whole=False)
            if self._filled == self.window_n:
                yield Cut(self._buf, whole=True)
                self.reset()
