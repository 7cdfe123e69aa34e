"""What a run of chunks and its result look like on the broker: JSON, never pickle (the broker
is a network service; unpickling what comes off it would run whatever was put there).

The engine's dataclasses (its config, chunks, matches) travel as JSON objects of their fields.
Python writes a float as the shortest decimal that reads back as the same double (`repr`), so
every number arrives exactly as it left; numpy scalars are written as the Python number of the
same value. Read back, each field gets its declared type again (tuples, nested dataclasses).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

import numpy as np

from songscan.chunks import Chunk
from songscan.config import EngineConfig, FingerprintConfig, MatchConfig, MediaLimits, ScanConfig
from songscan.matcher import Match

T = TypeVar("T")
RunResult = list[tuple[Chunk, list[Match]]]  # a run's matches by chunk (`scan.UnitResult`)
VERSION = 1  # of the payloads below; a worker refuses another


def to_wire(value: Any) -> Any:
    """`value` as plain JSON data: a dataclass as an object of its fields, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def from_wire(cls: type[T], data: Any) -> T:
    """The `cls` (a dataclass) that `to_wire` wrote as `data`."""
    hints = _hints(typing.cast(type, cls))
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**{name: _typed(hints[name], value) for name, value in data.items()})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _typed(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, *_) = typing.get_args(hint)
        return tuple(_typed(item, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        return _typed(kinds[0], value) if len(kinds) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_wire(hint, value)
    if hint is float and isinstance(value, int):
        return float(value)
    return value


# -- the engine's settings, as the API node has them ----------------------------------------
_ENGINE_PARTS = {
    "fingerprint": FingerprintConfig,
    "match": MatchConfig,
    "scan": ScanConfig,
    "limits": MediaLimits,
}


def engine_to_wire(cfg: EngineConfig) -> dict[str, Any]:
    """The recognition settings of `cfg`; not where the catalog is (each worker has its own
    URLs for it) nor the broker's settings."""
    return {name: to_wire(getattr(cfg, name)) for name in _ENGINE_PARTS}


def engine_from_wire(
    data: dict[str, Any], catalog_url: str | None, index_url: str | None
) -> EngineConfig:
    """The API node's recognition settings over this worker's catalog and index."""
    return EngineConfig(
        **{name: from_wire(cls, data[name]) for name, cls in _ENGINE_PARTS.items()},
        catalog_url=catalog_url,
        index_url=index_url,
    )


# -- a run's result -------------------------------------------------------------------------
def result_to_wire(result: RunResult) -> list[Any]:
    return [[to_wire(chunk), to_wire(matches)] for chunk, matches in result]


def result_from_wire(data: list[Any]) -> RunResult:
    return [
        (from_wire(Chunk, chunk), [from_wire(Match, m) for m in matches]) for chunk, matches in data
    ]
