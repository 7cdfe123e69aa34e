"""The try-it pages in a real headless Chromium (Debian's), driven by Playwright: pick a file,
submit, read the result table, the timeline and the raw response."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.api.conftest import Api, long_recording
from tests.api.music import excerpt, write_wav
from tests.browser import Box, PageProblems, box_of, pixels_near, screenshot_pixels, viewport_of


@pytest.fixture
def site_url(api: Api) -> str:  # for tests.browser's `page`
    return api.base_url


TRACK_COLOURS = [(0x2B, 0x6C, 0xB0), (0xC0, 0x56, 0x21)]  # .c0, .c1 in tryit.css


def check_timeline(page: Page, axis_labels: list[str]) -> None:
    """The timeline as a reader sees it: a time axis with these labels, every label whole
    inside the chart and on screen, bars painted in their colours, each name in the legend."""
    chart = page.locator("svg#timeline")
    chart.scroll_into_view_if_needed()
    frame = box_of(chart)
    assert viewport_of(page).holds(frame)
    expect(chart.locator(".x-axis .tick-label")).to_have_text(axis_labels)
    expect(chart.locator(".x-axis .axis-title")).to_have_text("time in the recording (m:ss)")
    ticks = [box_of(t) for t in chart.locator(".x-axis .tick-label").all()]
    assert not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1 :])
    for label in chart.locator("text").all():
        assert frame.holds(box_of(label)), label.text_content()
    painted = screenshot_pixels(chart)
    bars = chart.locator(".bar")
    legend = page.locator("#legend li")
    expect(legend).to_have_count(bars.count())
    for i, bar in enumerate(bars.all()):
        rect = box_of(bar.locator("rect"))
        for label in bar.locator("text").all():  # a label inside a bar fits in it
            assert rect.holds(box_of(label)), label.text_content()
        inside = Box(rect.x - frame.x + 1, rect.y - frame.y + 1, rect.width - 2, rect.height - 2)
        share = pixels_near(painted, TRACK_COLOURS[i], inside) / (inside.width * inside.height)
        assert share > 0.7, (i, share)  # the rest is the white label
        name = (bar.locator("title").text_content() or "").split(" (")[0]
        expect(legend.nth(i)).to_contain_text(name)


@pytest.mark.slow
def test_standard_form(page: Page, api: Api, tmp_path: Path) -> None:
    clip = write_wav(tmp_path / "clip.wav", excerpt(api.songs[2], 17.4, 37.4))
    page.goto("/try")
    page.fill("#api_token", api.tokens["trial"])
    page.set_input_files("#file", str(clip))
    page.click("#submit")
    expect(page.locator("#results tbody tr")).to_have_count(1)
    row = page.locator("#results tbody tr").first
    expect(row).to_contain_text("Song 2")
    expect(row).to_contain_text("00:17")
    raw = json.loads(page.locator("#raw").inner_text())
    assert raw["result"]["title"] == "Song 2"
    # the token is never written back into the page
    assert api.tokens["trial"] not in page.content()

    page.fill("#api_token", "0" * 40)
    page.set_input_files("#file", str(clip))
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("900")


@pytest.mark.slow
def test_enterprise_form_timeline(
    page: Page, api: Api, problems: PageProblems, tmp_path: Path
) -> None:
    long = write_wav(tmp_path / "long.wav", long_recording(api.songs))
    page.goto("/try?method=enterprise")
    page.fill("#api_token", api.tokens["enterprise"])
    page.set_input_files("#file", str(long))
    page.check("#accurate_offsets")
    page.click("#submit")
    expect(page.locator("#results tbody tr")).to_have_count(5)
    bars = page.locator("#timeline .bar")
    expect(bars).to_have_count(2)
    expect(bars.nth(0)).to_contain_text("Song 1")
    expect(bars.nth(1)).to_contain_text("Song 3")
    assert 11 <= float(bars.nth(0).get_attribute("data-start") or 0) <= 13
    assert 71 <= float(bars.nth(1).get_attribute("data-end") or 0) <= 72.5
    check_timeline(page, [f"{m}:{s:02d}" for m, s in (divmod(t, 60) for t in range(0, 81, 10))])
    raw = json.loads(page.locator("#raw").inner_text())
    assert [c["offset"] for c in raw["result"]] == ["00:12", "00:24", "00:36", "00:48", "01:00"]
    expect(page.locator("#accurate_offsets")).to_be_checked()
    assert problems.csp_violations(page) == []

    page.fill("#api_token", api.tokens["enterprise"])  # no file, no URL this time
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("700")


@pytest.mark.slow
def test_enterprise_form_csv_and_segments(page: Page, api: Api, tmp_path: Path) -> None:
    """The same recording answered as CSV and as segments: the table and the timeline are
    read from either reply, the raw reply is shown as sent, and the choice stays selected."""
    long = write_wav(tmp_path / "long.wav", long_recording(api.songs))
    page.goto("/try?method=enterprise")
    page.fill("#api_token", api.tokens["enterprise"])
    page.set_input_files("#file", str(long))
    page.check("#accurate_offsets")
    page.select_option("#response_type", "csv")
    page.click("#submit")
    expect(page.locator("#results tbody tr")).to_have_count(5)
    rows = list(csv.DictReader(io.StringIO(page.locator("#raw").inner_text())))
    assert [r["offset"] for r in rows] == ["00:12", "00:24", "00:36", "00:48", "01:00"]
    expect(page.locator("#results tbody tr").first).to_contain_text(rows[0]["start_offset"])
    bars = page.locator("#timeline .bar")
    expect(bars).to_have_count(2)
    expect(bars.nth(1)).to_contain_text("Song 3")
    assert 71 <= float(bars.nth(1).get_attribute("data-end") or 0) <= 72.5
    expect(page.locator("#response_type")).to_have_value("csv")

    page.fill("#api_token", api.tokens["enterprise"])
    page.set_input_files("#file", str(long))
    page.select_option("#response_type", "segments")
    page.click("#submit")
    expect(page.locator("#results tbody tr")).to_have_count(2)
    segments = json.loads(page.locator("#raw").inner_text())["result"]
    assert [s["title"] for s in segments] == ["Song 1", "Song 3"]
    expect(page.locator("#results tbody tr").nth(1)).to_contain_text("Song 3")
    expect(bars).to_have_count(2)
    assert float(bars.nth(0).get_attribute("data-start") or 0) == pytest.approx(
        segments[0]["start"], abs=0.05
    )
    expect(page.locator("#response_type")).to_have_value("segments")


@pytest.mark.slow
def test_enterprise_form_sends_use_timecode_and_return(
    page: Page, api: Api, tmp_path: Path
) -> None:
    clip = write_wav(tmp_path / "clip.wav", excerpt(api.songs[2], 0.0, 14.0))
    page.goto("/try?method=enterprise")
    page.fill("#api_token", api.tokens["enterprise"])
    page.set_input_files("#file", str(clip))
    page.check("#use_timecode")
    page.fill("#skip_first_seconds", "5")
    page.fill("#return", "spotify")
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("50")
    expect(page.locator("#error")).to_contain_text("use_timecode")
    expect(page.locator("#use_timecode")).to_be_checked()
    expect(page.locator("#return")).to_have_value("spotify")
