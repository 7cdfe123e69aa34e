"""Start times written in URLs (`?t=1m30s`, `&start=90`, `#t=01:30`), in seconds.

Used by the enterprise endpoint's `use_timecode=true` (api-contract.md §2).
"""

from __future__ import annotations

import math
import re
import urllib.parse

from songscan.errors import InvalidParameters

TIMECODE_KEYS = ("t", "time_continue", "start")
MAX_TIMECODE_S = 100 * 24 * 3600.0  # far beyond any file songscan scans

_NUMBER = r"\d+(?:\.\d+)?"
_SECONDS = re.compile(rf"(?P<s>{_NUMBER})s?")
_UNITS = re.compile(rf"(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>{_NUMBER})s)?")
_CLOCK = re.compile(r"(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d\d(?:\.\d+)?)")


def parse_timecode(value: str) -> float:
    """Seconds in `90`, `90s`, `90.5`, `1m30s`, `1h2m3s`, `01:30` or `1:02:03`;
    InvalidParameters for anything else."""
    text = value.strip().lower()
    seconds: float | None = None
    if match := _SECONDS.fullmatch(text):
        seconds = float(match["s"])
    elif text and (match := _UNITS.fullmatch(text)):
        seconds = 3600 * int(match["h"] or 0) + 60 * int(match["m"] or 0) + float(match["s"] or 0)
    elif match := _CLOCK.fullmatch(text):
        minutes, secs = int(match["m"]), float(match["s"])
        if secs >= 60 or (match["h"] is not None and minutes >= 60):
            raise InvalidParameters(f"invalid timecode {value!r}")
        seconds = 3600 * int(match["h"] or 0) + 60 * minutes + secs
    if seconds is None or not math.isfinite(seconds) or seconds > MAX_TIMECODE_S:
        raise InvalidParameters(f"invalid timecode {value!r}")
    return seconds


def timecode_from_url(url: str) -> float | None:
    """The start time in seconds named by `url`'s `t`, `time_continue` or `start` query
    parameter (first found, in that order), else by a `#t=` fragment; None when absent."""
    parts = urllib.parse.urlsplit(url)
    for source in (parts.query, parts.fragment):
        params = urllib.parse.parse_qs(source)
        for key in TIMECODE_KEYS:
            if params.get(key):
                return parse_timecode(params[key][0])
    return None
