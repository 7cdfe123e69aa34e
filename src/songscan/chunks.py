"""The enterprise chunk plan: which 12-second chunks of a file are recognised (and billed).

Chunk i starts at `skip_first_seconds + 12 * i`. Chunks are taken in a repeating pattern of
`every` recognised then `skip` passed over (`every=1, skip=4`: chunks 0, 5, 10, ...), at most
`limit` of them. The final chunk may be shorter than 12 s: it is recognised (and billed) when it
holds at least `min_final_chunk_s` seconds of audio, and dropped otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def chunk_plan(duration_s: float, params: PlanParams, cfg: ScanConfig) -> list[Chunk]:
    """The chunks to recognise in a file of `duration_s` seconds, in file order."""
    chunks: list[Chunk] = []
    period = params.every + params.skip
    usable = duration_s - params.skip_first_seconds
    if usable <= 0 or params.limit == 0:
        return chunks
    n_total = math.ceil(usable / cfg.chunk_s - 1e-9)
    for i in range(n_total):
        if i % period >= params.every:
            continue
        start = params.skip_first_seconds + i * cfg.chunk_s
        end = min(start + cfg.chunk_s, duration_s)
        if end - start < min(cfg.min_final_chunk_s, cfg.chunk_s) - 1e-9:
            break
        chunks.append(Chunk(i, start, end))
        if params.limit is not None and len(chunks) >= params.limit:
            break
    return chunks


def runs(plan: list[Chunk], max_chunks: int) -> list[list[Chunk]]:
    """Split the plan into runs of consecutive chunks (decoded in one pass), each at most
    `max_chunks` long: the units of work of a scan."""
    out: list[list[Chunk]] = []
    for chunk in plan:
        if out and chunk.index == out[-1][-1].index + 1 and len(out[-1]) < max_chunks:
            out[-1].append(chunk)
        else:
            out.append([chunk])
    return out
