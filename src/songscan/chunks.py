"""The chunk plan: which 12-second chunks of a file are recognised (and billed).

Chunk i starts at `skip_first_seconds + 12 * i`. Chunks are taken in a repeating pattern of
`every` recognised then `skip` passed over (`every=1, skip=4`: chunks 0, 5, 10, ...), at most
`limit` of them. The final chunk may be shorter than 12 s: it is recognised (and billed) when it
holds at least `min_final_chunk_s` seconds of audio, and dropped otherwise.

A plan is arithmetic: its length, its k-th chunk and its runs are computed, never listed, so
what a plan costs does not depend on the duration it is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from .config import ScanConfig
from .errors import InvalidParameters


@dataclass(frozen=True)
class PlanParams:
    skip: int = 0
    every: int = 1
    limit: int | None = None
    skip_first_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InvalidParameters("every must be an integer of at least 1")
        if self.skip < 0:
            raise InvalidParameters("skip must be an integer of at least 0")
        if self.limit is not None and self.limit < 0:
            raise InvalidParameters("limit must be an integer of at least 0")
        if not math.isfinite(self.skip_first_seconds) or self.skip_first_seconds < 0:
            raise InvalidParameters("skip_first_seconds must be a number of at least 0")


@dataclass(frozen=True)
class Chunk:
    index: int  # position among all 12-second chunks after skip_first_seconds
    start_s: float  # in the file
    end_s: float  # in the file (the final chunk may be shorter)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, eq=False)
class ChunkPlan(Sequence[Chunk]):
    """The chunks to recognise, in file order: `len` is the billing count."""

    duration_s: float
    first_s: float  # where chunk 0 starts (skip_first_seconds)
    chunk_s: float
    every: int
    period: int  # every + skip
    n_chunks: int

    def __len__(self) -> int:
        return self.n_chunks

    @overload
    def __getitem__(self, k: int) -> Chunk: ...
    @overload
    def __getitem__(self, k: slice) -> list[Chunk]: ...
    def __getitem__(self, k: int | slice) -> Chunk | list[Chunk]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.n_chunks))]
        if k < 0:
            k += self.n_chunks
        if not 0 <= k < self.n_chunks:
            raise IndexError("chunk plan index out of range")
        index = (k // self.every) * self.period + k % self.every
        start = self.first_s + index * self.chunk_s
        return Chunk(index, start, min(start + self.chunk_s, self.duration_s))

    def __iter__(self) -> Iterator[Chunk]:
        for k in range(self.n_chunks):
            yield self[k]

    def runs(self, max_chunks: int) -> Runs:
        """The plan split into runs of consecutive chunks (decoded in one pass), each at most
        `max_chunks` long: the units of work of a scan."""
        return Runs(self, max_chunks)


@dataclass(frozen=True, eq=False)
class Runs(Sequence[list[Chunk]]):
    """A plan's runs: the stretches of consecutive chunks (`every` long, or the whole plan when
    nothing is skipped), each cut into pieces of at most `max_chunks`."""

    plan: ChunkPlan
    max_chunks: int

    @property
    def _stretch(self) -> int:
        plan = self.plan
        return plan.n_chunks if plan.period == plan.every else plan.every

    @property
    def _per_stretch(self) -> int:
        return -(-self._stretch // self.max_chunks)

    def __len__(self) -> int:
        if self.plan.n_chunks == 0:
            return 0
        full, rest = divmod(self.plan.n_chunks, self._stretch)
        return full * self._per_stretch + -(-rest // self.max_chunks)

    @overload
    def __getitem__(self, k: int) -> list[Chunk]: ...
    @overload
    def __getitem__(self, k: slice) -> list[list[Chunk]]: ...
    def __getitem__(self, k: int | slice) -> list[Chunk] | list[list[Chunk]]:
        n = len(self)
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(n))]
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError("run index out of range")
        stretch, piece = divmod(k, self._per_stretch)
        first = stretch * self._stretch + piece * self.max_chunks
        left = min(self._stretch - piece * self.max_chunks, self.plan.n_chunks - first)
        size = min(self.max_chunks, left)
        return self.plan[first : first + size]

    def __iter__(self) -> Iterator[list[Chunk]]:
        for k in range(len(self)):
            yield self[k]


def chunk_plan(duration_s: float, params: PlanParams, cfg: ScanConfig) -> ChunkPlan:
    """The chunks to recognise in a file of `duration_s` seconds (a finite number)."""
    first, chunk_s = params.skip_first_seconds, cfg.chunk_s
    period = params.every + params.skip
    usable = duration_s - first
    count = 0
    if usable > 0 and params.limit != 0:
        n_total = math.ceil(usable / chunk_s - 1e-9)
        last_start = first + (n_total - 1) * chunk_s
        last_end = min(last_start + chunk_s, duration_s)
        if last_end - last_start < min(cfg.min_final_chunk_s, chunk_s) - 1e-9:
            n_total -= 1  # too short to recognise
        periods, rest = divmod(n_total, period)
        count = periods * params.every + min(rest, params.every)
        if params.limit is not None:
            count = min(count, params.limit)
    return ChunkPlan(duration_s, first, chunk_s, params.every, period, count)
