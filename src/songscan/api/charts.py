"""The pages' two charts as SVG geometry, drawn on the server: usage per day on the dashboard
and where songs play on the try-it page.

Server-rendered SVG needs no script and no inline style (so it lives under the pages'
Content-Security-Policy as it is), and both charts are a few dozen shapes. Coordinates are in
the SVG's viewBox units; the templates only place what is computed here. Axis labels are
kept inside the viewBox by the margins below, so none is cut off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

COLOURS = 6  # colour classes c0 … c5 in the stylesheets


def nice_step(span: float, most_ticks: int) -> float:
    """The smallest of 1, 2, 5 × 10^k that cuts `span` into at most `most_ticks` steps."""
    if span <= 0:
        return 1.0
    raw = span / most_ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def clock(seconds: float) -> str:
    """`m:ss` (or `h:mm:ss`), as a reader of a recording's timeline expects."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class Tick:
    position: float  # x (or y) in viewBox units
    label: str


# -- usage per day (dashboard) ------------------------------------------------------------------


@dataclass(frozen=True)
class DayBar:
    day: str  # ISO date
    requests: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class UsageChart:
    width: int
    height: int
    left: float  # the plot area: y axis at `left`, x axis at `bottom`
    right: float
    top: float
    bottom: float
    bars: list[DayBar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    total: int

    @property
    def empty(self) -> bool:
        return self.total == 0


def usage_chart(usage_by_day: list[tuple[date, int]]) -> UsageChart:
    """Bars of requests per day with a y axis of request counts and an x axis of dates (every
    7th day, ending today). With no requests, the axes alone (the page says so)."""
    width, height = 640, 200
    left, right, top, bottom = 52.0, width - 28.0, 24.0, height - 34.0
    peak = max((n for _, n in usage_by_day), default=0)
    step = max(1.0, nice_step(peak, 4))  # whole requests: no 0.5 tick
    y_max = step * math.ceil(peak / step) if peak else 1.0
    y_ticks = [
        Tick(round(bottom - (value / y_max) * (bottom - top), 1), f"{int(value):,}")
        for value in _range(0.0, y_max, step)
    ]
    if not peak:
        y_ticks = y_ticks[:1]  # only the zero line: there is nothing to scale
    slot = (right - left) / max(1, len(usage_by_day))
    bars, x_ticks = [], []
    last = len(usage_by_day) - 1
    for i, (day, n) in enumerate(usage_by_day):
        # a day with requests is never drawn thinner than a hairline, however big the peak
        bar_height = max(1.5, n / y_max * (bottom - top)) if n else 0.0
        x = left + i * slot
        bars.append(
            DayBar(
                day.isoformat(),
                n,
                round(x + 1, 1),
                round(bottom - bar_height, 1),
                round(slot - 2, 1),
                round(bar_height, 1),
            )
        )
        if (last - i) % 7 == 0:
            x_ticks.append(Tick(round(x + slot / 2, 1), f"{day:%b} {day.day}"))
    return UsageChart(
        width,
        height,
        left,
        right,
        top,
        bottom,
        bars,
        y_ticks,
        x_ticks,
        sum(n for _, n in usage_by_day),
    )


def _range(start: float, stop: float, step: float) -> list[float]:
    count = round((stop - start) / step)
    return [start + i * step for i in range(count + 1)]


# -- where songs play (try-it) ----------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A run of the recording in which one track plays, in seconds."""

    start_s: float
    end_s: float
    label: str
    audio_id: int


@dataclass(frozen=True)
class PlacedSpan:
    span: Span
    x: float
    width: float
    colour: int
    label_fits: bool  # whether the label is drawn inside the bar (the legend always has it)


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    left: float
    right: float
    bar_top: float
    bar_height: float
    axis_y: float
    spans: list[PlacedSpan]
    ticks: list[Tick]
    end_s: float


# Seconds between ticks a reader expects on a clock axis.
_CLOCK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)
_CHAR_WIDTH = 7.0  # a generous width of one 12-unit character, to decide whether a label fits


def timeline(spans: list[Span], most_ticks: int = 10) -> Timeline:
    """The spans along a time axis from 0 to the last span's end, rounded up to a tick."""
    width, height = 900, 78
    left, right = 30.0, width - 30.0  # room for half a tick label at either end
    last_end = max((s.end_s for s in spans), default=0.0) or 1.0
    step = next((s for s in _CLOCK_STEPS if last_end / s <= most_ticks), _CLOCK_STEPS[-1])
    end_s = step * math.ceil(last_end / step)
    scale = (right - left) / end_s
    ids = sorted({s.audio_id for s in spans})
    placed = []
    for s in spans:
        bar_width = max(2.0, (s.end_s - s.start_s) * scale)
        placed.append(
            PlacedSpan(
                s,
                round(left + s.start_s * scale, 1),
                round(bar_width, 1),
                ids.index(s.audio_id) % COLOURS,
                label_fits=len(s.label) * _CHAR_WIDTH + 10 <= bar_width,
            )
        )
    ticks = [Tick(round(left + t * scale, 1), clock(t)) for t in _range(0.0, end_s, float(step))]
    return Timeline(width, height, left, right, 6.0, 30.0, 44.0, placed, ticks, end_s)
