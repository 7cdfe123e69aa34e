"""The `[accounts]` section of songscan.toml (the `[plans]` sections are `plans.py`'s)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from songscan.errors import ConfigError


@dataclass(frozen=True)
class AccountsConfig:
    """The `[accounts]` section of songscan.toml."""

    free_requests: int = 300
    default_plan: str = "trial"
    test_token: bool = False
    test_daily_limit: int = 10
    test_plan: str = "trial"
    login_attempts: int = 5  # failed log-ins per e-mail and client address before waiting
    login_attempts_per_address: int = 30  # failed log-ins per client address, any e-mail
    login_lockout_minutes: int = 15  # the longest wait the back-off reaches
    session_days: int = 14
    secure_cookies: bool = False
    database_url: str | None = None
    server_lease_s: int = 30  # a server process unheard of this long is taken for dead

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AccountsConfig:
        section = config.get("accounts", {})
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"[accounts]: unknown key {key!r} (known: {', '.join(known)})")
            expected = type(getattr(cls(), key)) if key != "database_url" else str
            if not isinstance(value, expected) or (
                isinstance(value, bool) and expected is not bool
            ):
                raise ConfigError(f"[accounts].{key}: expected {expected.__name__}, got {value!r}")
            values[key] = value
        return cls(**values)
