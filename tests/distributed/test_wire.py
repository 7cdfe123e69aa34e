"""The runs and their results travel as JSON through the broker (Kombu's JSON, as Celery sends
them): every number comes back exactly, every field with its type."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from kombu.utils.json import dumps, loads

from songscan.chunks import Chunk
from songscan.config import DEFAULT, EngineConfig, RemoteScans
from songscan.distributed.wire import (
    engine_from_wire,
    engine_to_wire,
    result_from_wire,
    result_to_wire,
)
from songscan.matcher import Match, Placement

finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    speed=finite,
    start=finite,
    end=finite,
    pitch=finite,
    offset=st.integers(-(2**40), 2**40),
    weak=st.booleans(),
)
def test_matches_come_back_exactly(
    speed: float, start: float, end: float, pitch: float, offset: int, weak: bool
) -> None:
    match = Match(
        track_id=np.int64(7),  # numpy scalars, as the matcher makes some
        aligned_hits=np.int32(12),
        speed=speed,
        offset_frames=offset,
        start_frame=np.float64(start),
        end_frame=end,
        alternatives=(Placement(offset + 1, 9, start, end),),
        weak=weak,
        pitch=pitch,
    )
    unit = [(Chunk(3, 36.0, 36.0 + math.pi), [match]), (Chunk(4, 48.0, 60.0), [])]
    back = result_from_wire(loads(dumps(result_to_wire(unit))))
    assert back == unit
    (_, (came,)), _ = back
    assert type(came.track_id) is int and type(came.start_frame) is float
    assert type(came.alternatives) is tuple and type(came.alternatives[0]) is Placement
    assert math.copysign(1, came.speed) == math.copysign(1, speed)  # -0.0 stays -0.0


def test_the_engine_settings_arrive_whole_over_the_workers_own_catalog() -> None:
    cfg = EngineConfig(
        catalog_url="postgresql+psycopg://api-node/db",
        remote=RemoteScans("redis://b:6379/0", "http://n:8000", "s" * 40),
    )
    data = loads(dumps(engine_to_wire(cfg)))
    assert "s" * 40 not in dumps(data) and "api-node" not in dumps(data)
    got = engine_from_wire(data, "postgresql+psycopg://worker/db", "redis-cluster://w:7000")
    assert got == EngineConfig(
        catalog_url="postgresql+psycopg://worker/db", index_url="redis-cluster://w:7000"
    )
    assert got.match.speed_steps == DEFAULT.match.speed_steps  # tuples again
