"""The `[streams]` section of songscan.toml (docs/api.md, "Live streams")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from songscan.errors import ConfigError


@dataclass(frozen=True)
class StreamsSettings:
    listen: bool = True  # this server process listens to streams (False: API only)
    max_streams: int = 200  # streams one server process listens to at once
    # A listener unheard of this long loses its stream to another (taken over within 4/3 of it).
    lease_s: float = 15.0
    reconnect_min_s: float = 1.0  # first wait before reconnecting a dropped stream
    reconnect_max_s: float = 60.0  # the longest wait the back-off reaches
    # A drop shorter than this does not end the play in progress (nor notify 650).
    gap_tolerance_s: float = 15.0
    probe_s: float = 15.0  # addStream/setStreamUrl wait this long for audio (0: no check)
    read_timeout_s: float = 15.0  # a stream that sends nothing this long has dropped
    silence_notify_s: float = 120.0  # no audio above the silence level this long: 651
    callback_timeout_s: float = 10.0  # one delivery attempt
    callback_attempts: int = 5  # attempts per callback before it is given up
    callback_backoff_s: float = 2.0  # wait after the first failed attempt; doubles
    event_retention_s: float = 86_400.0  # how long /longpoll/ can still serve an event

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StreamsSettings:
        section = config.get("streams", {})
        if not isinstance(section, Mapping):
            raise ConfigError("[streams] must be a table")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"[streams]: unknown key {key!r} (known: {', '.join(known)})")
            default = getattr(cls(), key)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok:
                raise ConfigError(
                    f"[streams].{key}: expected {type(default).__name__}, got {value!r}"
                )
            if not isinstance(value, bool) and value < 0:
                raise ConfigError(f"[streams].{key}: must not be negative")
            values[key] = float(value) if isinstance(default, float) else value
        return cls(**values)
