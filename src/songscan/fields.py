"""Typed readers of a request's fields (strings, as they came in a query string or a form):
each turns one into a value or raises InvalidParameters (error 50). No HTTP here: the API, the
long jobs (whose fields are stored) and the use cases read fields with them alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from songscan.errors import InvalidParameters

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})
_INTEGER = re.compile(r"[+-]?\d{1,18}")


def text_param(fields: Mapping[str, str], name: str) -> str | None:
    """The value, stripped; None when absent or empty."""
    value = fields.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def int_param(fields: Mapping[str, str], name: str, *, minimum: int | None = None) -> int | None:
    value = text_param(fields, name)
    if value is None:
        return None
    if not _INTEGER.fullmatch(value):
        raise InvalidParameters(f"{name} must be an integer, got {value[:40]!r}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise InvalidParameters(f"{name} must be an integer of at least {minimum}, got {number}")
    return number


def float_param(
    fields: Mapping[str, str], name: str, *, minimum: float | None = None
) -> float | None:
    value = text_param(fields, name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidParameters(f"{name} must be a number, got {value[:40]!r}") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise InvalidParameters(f"{name} must be a number of at least {minimum}, got {value!r}")
    return number


def bool_param(fields: Mapping[str, str], name: str) -> bool:
    value = (fields.get(name) or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidParameters(f"{name} must be true or false, got {value[:40]!r}")


def choice_param(fields: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (case-insensitive); the first is the default."""
    value = (text_param(fields, name) or choices[0]).lower()
    if value not in choices:
        raise InvalidParameters(f"{name} must be one of {', '.join(choices)}, got {value[:40]!r}")
    return value
