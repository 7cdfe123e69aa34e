"""The charts' geometry: ticks a reader expects, labels that fit, an empty chart that says so.
(How they look is tested in Chromium: tests/accounts/test_browser.py, tests/api/test_tryit.py.)"""

from __future__ import annotations

from datetime import date, timedelta

from songscan.api.charts import Span, clock, nice_step, timeline, usage_chart


def test_nice_steps_and_clock_labels() -> None:
    steps = [nice_step(span, 4) for span in (0.8, 3, 12, 15, 40, 950, 12_000)]
    assert steps == [0.2, 1, 5, 5, 10, 500, 5000]
    assert [clock(s) for s in (0, 9.6, 75, 3600, 7322)] == [
        "0:00",
        "0:10",
        "1:15",
        "1:00:00",
        "2:02:02",
    ]


def test_timeline_ticks_span_the_recording_and_labels_fit_their_bars() -> None:
    two_hours = timeline([Span(0, 5400, "A long show", 1), Span(5400, 5402, "Jingle", 2)])
    labels = [t.label for t in two_hours.ticks]
    assert labels[0] == "0:00" and labels[-1] == "1:40:00" and len(labels) <= 11
    assert two_hours.ticks[-1].position == two_hours.right
    long, short = two_hours.spans
    assert long.label_fits and not short.label_fits  # the legend names the jingle
    assert short.width >= 2  # still drawn
    assert long.colour != short.colour


def test_usage_chart_axes_and_empty_state() -> None:
    days = [date(2026, 11, 3) + timedelta(days=i) for i in range(30)]
    empty = usage_chart([(d, 0) for d in days])
    assert empty.empty and [t.label for t in empty.y_ticks] == ["0"]
    assert [t.label for t in empty.x_ticks] == ["Nov 4", "Nov 11", "Nov 18", "Nov 25", "Dec 2"]
    busy = usage_chart([(d, 1234 if d.day == 20 else 1) for d in days])
    assert [t.label for t in busy.y_ticks] == ["0", "500", "1,000", "1,500"]
    assert all(b.height >= 1.5 for b in busy.bars)  # one request is still visible
    assert all(b.y + b.height == busy.bottom for b in busy.bars)
    one = usage_chart([(d, 1 if d.day == 20 else 0) for d in days])
    assert [t.label for t in one.y_ticks] == ["0", "1"]
