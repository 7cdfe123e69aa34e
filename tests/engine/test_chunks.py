from __future__ import annotations

import pytest

from songscan.chunks import PlanParams, chunk_plan, runs
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
    assert chunk_plan(20.0, PlanParams(skip_first_seconds=25), CFG) == []


def test_final_partial_chunk_rule() -> None:
    # 3 s or more left: recognised (and billed) as a shorter chunk
    plan = chunk_plan(27.0, PlanParams(), CFG)
    assert [(c.start_s, c.end_s) for c in plan] == [(0, 12), (12, 24), (24, 27)]
    # less than 3 s: dropped
    assert len(chunk_plan(26.9, PlanParams(), CFG)) == 2
    # a file shorter than one chunk is one short chunk, if long enough
    assert [(c.start_s, c.end_s) for c in chunk_plan(5.0, PlanParams(), CFG)] == [(0, 5)]
    assert chunk_plan(2.0, PlanParams(), CFG) == []


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
    assert [[c.index for c in r] for r in runs(plan, 2)][:4] == [[0, 1], [2], [5, 6], [7]]
