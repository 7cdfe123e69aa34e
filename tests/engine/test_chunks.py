from __future__ import annotations

import math
import random

import pytest

from songscan.chunks import Chunk, PlanParams, chunk_plan
from songscan.config import DEFAULT
from songscan.errors import InvalidParameters

CFG = DEFAULT.scan


def indices(duration: float, **kw: object) -> list[int]:
    return [c.index for c in chunk_plan(duration, PlanParams(**kw), CFG)]  # type: ignore[arg-type]


def test_every_chunk_of_a_minute() -> None:
    plan = chunk_plan(60.0, PlanParams(), CFG)
    assert [(c.start_s, c.end_s) for c in plan] == [(0, 12), (12, 24), (24, 36), (36, 48), (48, 60)]


def test_contract_examples() -> None:
    # every=1&skip=4: 12 s scanned out of each 60 s
    assert indices(600.0, every=1, skip=4) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    # every=1&skip=9: one request per 120 s
    plan = chunk_plan(3600.0, PlanParams(every=1, skip=9), CFG)
    assert len(plan) == 30
    assert [c.start_s for c in plan[:3]] == [0.0, 120.0, 240.0]


def test_every_and_skip_pattern_repeats() -> None:
    assert indices(120.0, every=2, skip=1) == [0, 1, 3, 4, 6, 7, 9]


def test_limit_caps_the_billable_chunks() -> None:
    assert indices(3600.0, limit=3) == [0, 1, 2]
    assert indices(3600.0, every=1, skip=4, limit=2) == [0, 5]
    assert indices(3600.0, limit=0) == []


def test_skip_first_seconds_moves_chunk_zero() -> None:
    plan = chunk_plan(100.0, PlanParams(skip_first_seconds=30.5), CFG)
    assert plan[0].start_s == 30.5
    assert plan[1].start_s == 42.5
    assert plan[-1].end_s == 100.0
    assert list(chunk_plan(20.0, PlanParams(skip_first_seconds=25), CFG)) == []


def test_final_partial_chunk_rule() -> None:
    # 3 s or more left: recognised (and billed) as a shorter chunk
    plan = chunk_plan(27.0, PlanParams(), CFG)
    assert [(c.start_s, c.end_s) for c in plan] == [(0, 12), (12, 24), (24, 27)]
    # less than 3 s: dropped
    assert len(chunk_plan(26.9, PlanParams(), CFG)) == 2
    # a file shorter than one chunk is one short chunk, if long enough
    assert [(c.start_s, c.end_s) for c in chunk_plan(5.0, PlanParams(), CFG)] == [(0, 5)]
    assert list(chunk_plan(2.0, PlanParams(), CFG)) == []


@pytest.mark.parametrize(
    "kw",
    [
        {"every": 0},
        {"skip": -1},
        {"limit": -2},
        {"skip_first_seconds": -1.0},
        {"skip_first_seconds": float("nan")},
    ],
)
def test_invalid_parameters(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidParameters):
        PlanParams(**kw)  # type: ignore[arg-type]


def test_runs_split_consecutive_chunks() -> None:
    plan = chunk_plan(600.0, PlanParams(every=3, skip=2), CFG)
    assert [[c.index for c in r] for r in plan.runs(2)][:4] == [[0, 1], [2], [5, 6], [7]]


def listed_plan(duration_s: float, params: PlanParams) -> list[Chunk]:
    """The plan as the list it was before it became arithmetic: the reference it must equal."""
    chunks: list[Chunk] = []
    period = params.every + params.skip
    usable = duration_s - params.skip_first_seconds
    if usable <= 0 or params.limit == 0:
        return chunks
    for i in range(math.ceil(usable / CFG.chunk_s - 1e-9)):
        if i % period >= params.every:
            continue
        start = params.skip_first_seconds + i * CFG.chunk_s
        end = min(start + CFG.chunk_s, duration_s)
        if end - start < min(CFG.min_final_chunk_s, CFG.chunk_s) - 1e-9:
            break
        chunks.append(Chunk(i, start, end))
        if params.limit is not None and len(chunks) >= params.limit:
            break
    return chunks


def listed_runs(plan: list[Chunk], max_chunks: int) -> list[list[Chunk]]:
    out: list[list[Chunk]] = []
    for chunk in plan:
        if out and chunk.index == out[-1][-1].index + 1 and len(out[-1]) < max_chunks:
            out[-1].append(chunk)
        else:
            out.append([chunk])
    return out


def test_the_arithmetic_plan_is_the_listed_one() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        duration = rng.choice([rng.uniform(0, 400), rng.randrange(0, 40) * 12.0, 27.0, 26.9])
        params = PlanParams(
            skip=rng.choice([0, 0, 1, 4, rng.randrange(0, 9)]),
            every=rng.choice([1, 1, 2, 3, rng.randrange(1, 30)]),
            limit=rng.choice([None, None, 0, 1, rng.randrange(0, 40)]),
            skip_first_seconds=rng.choice([0.0, 0.0, 30.5, rng.uniform(0, 100)]),
        )
        expected = listed_plan(duration, params)
        plan = chunk_plan(duration, params, CFG)
        assert len(plan) == len(expected), (duration, params)
        assert list(plan) == expected, (duration, params)
        if expected:
            assert plan[-1] == expected[-1] and plan[len(plan) // 2] == expected[len(plan) // 2]
        max_chunks = rng.choice([1, 2, 3, 25])
        assert len(plan.runs(max_chunks)) == len(listed_runs(expected, max_chunks))
        assert list(plan.runs(max_chunks)) == listed_runs(expected, max_chunks)


def test_a_plan_is_counted_not_listed() -> None:
    """A header claiming 2^31 MP3 frames (56 million seconds): the plan is counted and indexed
    at once, with no list of its 4.7 million chunks."""
    duration = 2**31 * 1152 / 44_100
    plan = chunk_plan(duration, PlanParams(), CFG)
    assert len(plan) == math.ceil(duration / 12)
    assert plan[-1].index == len(plan) - 1 and plan[-1].end_s == duration
    runs = plan.runs(25)
    assert len(runs) == math.ceil(len(plan) / 25)
    assert [c.index for c in runs[-1]] == list(range((len(runs) - 1) * 25, len(plan)))
    sparse = chunk_plan(duration, PlanParams(every=2, skip=3), CFG)
    assert len(sparse) == 2 * (len(plan) // 5) + min(len(plan) % 5, 2)
    assert [c.index for c in sparse[:5]] == [0, 1, 5, 6, 10]
