"""Plans: what an account may do and what it costs. Defaults here, overrides in `[plans.NAME]`.

A plan is a name, the requests included each calendar month (UTC), the price of a month, the
price per 1000 requests beyond what is left (overage; only when `overage_limit` > 0), and the
entitlements the API checks. `trial` is a new account's plan; `enterprise` has every entitlement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from songscan.errors import ConfigError


@dataclass(frozen=True)
class Entitlements:
    """What the API lets a token do beyond standard recognition."""

    enterprise_metadata: bool  # `isrc`, `upc`, `score` in enterprise results
    custom_catalog: bool  # `/upload/`
    enterprise_url_input: bool  # `url=` on `/enterprise`
    max_file_bytes: int
    rate_limit_per_s: float
    stream_slots: int = 0  # live streams monitored at once (`addStream`; docs/api.md)


@dataclass(frozen=True)
class Plan:
    name: str
    title: str
    monthly_requests: int  # granted at the start of each calendar month (UTC); unused ones expire
    monthly_price: float  # USD per month (Stripe subscription), 0 for none
    price_per_1000_beyond: float  # USD per 1000 requests of overage
    overage_limit: int  # how many requests beyond what is left may run (0: refuse with 902)
    stripe_price: str | None  # a Stripe Price id for the subscription; None: a price_data is sent
    entitlements: Entitlements

    @property
    def allows_overage(self) -> bool:
        return self.overage_limit > 0


_MB = 1024 * 1024

DEFAULT_PLANS: dict[str, Plan] = {
    "trial": Plan(
        name="trial",
        title="Trial",
        monthly_requests=0,
        monthly_price=0.0,
        price_per_1000_beyond=0.0,
        overage_limit=0,
        stripe_price=None,
        entitlements=Entitlements(
            enterprise_metadata=False,
            custom_catalog=False,
            enterprise_url_input=False,
            max_file_bytes=100 * _MB,
            rate_limit_per_s=2.0,
        ),
    ),
    "startup": Plan(
        name="startup",
        title="Startup",
        monthly_requests=10_000,
        monthly_price=29.0,
        price_per_1000_beyond=5.0,
        overage_limit=0,
        stripe_price=None,
        entitlements=Entitlements(
            enterprise_metadata=False,
            custom_catalog=True,
            enterprise_url_input=True,
            max_file_bytes=1024 * _MB,
            rate_limit_per_s=10.0,
            stream_slots=2,
        ),
    ),
    "enterprise": Plan(
        name="enterprise",
        title="Enterprise",
        monthly_requests=100_000,
        monthly_price=299.0,
        price_per_1000_beyond=2.0,
        overage_limit=1_000_000,
        stripe_price=None,
        entitlements=Entitlements(
            enterprise_metadata=True,
            custom_catalog=True,
            enterprise_url_input=True,
            max_file_bytes=10 * 1024 * _MB,
            rate_limit_per_s=50.0,
            stream_slots=100,
        ),
    ),
}

# Config keys of `[plans.NAME]` and their types; `max_file_mb` maps to `max_file_bytes`.
_PLAN_KEYS: dict[str, tuple[type, ...]] = {
    "title": (str,),
    "monthly_requests": (int,),
    "monthly_price": (int, float),
    "price_per_1000_beyond": (int, float),
    "overage_limit": (int,),
    "stripe_price": (str,),
    "enterprise_metadata": (bool,),
    "custom_catalog": (bool,),
    "enterprise_url_input": (bool,),
    "max_file_mb": (int, float),
    "rate_limit_per_s": (int, float),
    "stream_slots": (int,),
}


def _checked(name: str, key: str, value: Any) -> Any:
    if key not in _PLAN_KEYS:
        known = ", ".join(sorted(_PLAN_KEYS))
        raise ConfigError(f"[plans.{name}]: unknown key {key!r} (known: {known})")
    types = _PLAN_KEYS[key]
    # bool is an int in Python; a number where a flag is expected (or the reverse) is a mistake.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ConfigError(f"[plans.{name}].{key}: expected {types[0].__name__}, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"[plans.{name}].{key}: must not be negative")
    return value


def _apply(base: Plan, name: str, overrides: Mapping[str, Any]) -> Plan:
    plan_changes: dict[str, Any] = {}
    ent_changes: dict[str, Any] = {}
    ent_names = {f.name for f in fields(Entitlements)}
    for key, raw in overrides.items():
        value = _checked(name, key, raw)
        if key == "max_file_mb":
            ent_changes["max_file_bytes"] = int(value * _MB)
        elif key in ent_names:
            ent_changes[key] = float(value) if key == "rate_limit_per_s" else value
        elif key in ("monthly_price", "price_per_1000_beyond"):
            plan_changes[key] = float(value)
        else:
            plan_changes[key] = value
    return replace(base, entitlements=replace(base.entitlements, **ent_changes), **plan_changes)


def load_plans(config: Mapping[str, Any]) -> dict[str, Plan]:
    """The default plans with `[plans.NAME]` tables applied; a new NAME starts from `trial`."""
    plans = dict(DEFAULT_PLANS)
    section = config.get("plans", {})
    if not isinstance(section, Mapping):
        raise ConfigError("[plans] must be a table of [plans.NAME] tables")
    for name, overrides in section.items():
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"[plans.{name}] must be a table")
        base = plans.get(name) or replace(DEFAULT_PLANS["trial"], name=name, title=name.title())
        plans[name] = _apply(base, name, overrides)
    return plans
