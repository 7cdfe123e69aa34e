"""The dashboard in a real headless Chromium (Debian's), driven by Playwright.

sign up → the token → the token works against the HTTP API (standard and enterprise
recognition over a real socket) → the usage shows up → a signed webhook raises the quota →
the page shows it → rotate the token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import update

from songscan.accounts.models import LedgerEntry
from songscan.errors import UnknownToken
from tests.accounts.conftest import WEBHOOK_SECRET, Site
from tests.audio import synth_song, write_audio
from tests.browser import Box, PageProblems, box_of, pixels_near, screenshot_pixels, viewport_of
from tests.servers import checkout_completed_event, stripe_signature


@pytest.fixture
def site_url(site: Site) -> str:  # for tests.browser's `page`
    return site.base_url


def use_the_api(site: Site, token: str, path: str, audio: Path) -> None:
    """A recognition request over HTTP, as an AudD client sends it."""
    with audio.open("rb") as fh:
        response = httpx.post(
            f"{site.base_url}{path}",
            data={"api_token": token},
            files={"file": (audio.name, fh, "audio/wav")},
            timeout=120,
        )
    assert response.status_code == 200
    assert response.json()["status"] == "success", response.text


@pytest.mark.slow
def test_signup_to_paid_quota_in_a_browser(
    page: Page, site: Site, problems: PageProblems, tmp_path: Path
) -> None:
    clip = write_audio(tmp_path / "clip.wav", synth_song(5, 10.0))
    show = write_audio(tmp_path / "show.wav", synth_song(6, 54.0))  # 4 chunks + a 6 s one
    page.goto("/signup")
    page.fill("#email", "browser@example.org")
    page.fill("#password", "short")
    page.click("button[type=submit]")  # the browser's own minlength check stops this one
    expect(page).to_have_url(f"{site.base_url}/signup")
    page.fill("#password", "a-good-long-passphrase")
    page.click("button[type=submit]")

    token = page.get_by_test_id("token").input_value()
    assert len(token) == 40
    page.click("#copy")
    expect(page.locator("#copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == token  # pages.js, under the CSP

    use_the_api(site, token, "/", clip)  # standard recognition: 1 request
    use_the_api(site, token, "/enterprise", show)  # 1 request per recognised chunk: 5

    page.get_by_test_id("continue").click()
    expect(page.get_by_test_id("remaining")).to_have_text("294")
    expect(page.get_by_test_id("plan")).to_have_text("Trial")
    expect(page.get_by_test_id("today-usage")).to_have_text("6")
    rows = page.get_by_test_id("recent").locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("enterprise")
    expect(rows.nth(0)).to_contain_text("5")
    expect(page.get_by_test_id("token-hint")).to_have_text(f"{token[:2]}***{token[-2:]}")
    assert token not in page.content()

    assert problems.csp_violations(page) == []
    page.get_by_test_id("buy-10k").click()  # off to (the stand-in for) Stripe's payment page
    expect(page.locator("h1")).to_have_text("Stripe stand-in checkout")
    session_id = page.url.rsplit("/", 1)[1]
    event = checkout_completed_event(session_id)
    webhook = httpx.post(
        f"{site.base_url}/stripe/webhook",
        content=event,
        headers={"Stripe-Signature": stripe_signature(event, WEBHOOK_SECRET)},
    )
    assert webhook.status_code == 200

    page.goto("/dashboard?paid=1")
    expect(page.get_by_test_id("notice")).to_be_visible()
    expect(page.get_by_test_id("remaining")).to_have_text("10,294")
    expect(page.get_by_test_id("credits")).to_contain_text("+10,000")

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("rotate").click()
    new_token = page.get_by_test_id("token").input_value()
    assert new_token != token
    with pytest.raises(UnknownToken):
        site.accounts.authenticate(token, "127.0.0.1")
    use_the_api(site, new_token, "/", clip)

    page.goto("/dashboard")
    expect(page.get_by_test_id("remaining")).to_have_text("10,293")
    page.click("text=Log out")
    expect(page).to_have_url(f"{site.base_url}/login")
    page.goto("/dashboard")
    expect(page).to_have_url(f"{site.base_url}/login")
    assert problems.csp_violations(page) == []
    assert problems.console_errors == []


BAR_BLUE = (0x3B, 0x6F, 0xD8)  # .chart .bar in pages.css


def check_chart_labels(page: Page, chart: Locator) -> list[str]:
    """Every label of the chart is drawn whole inside it and on screen, and no two tick labels
    overlap; returns the x axis's labels."""
    chart.scroll_into_view_if_needed()
    frame = box_of(chart)
    assert viewport_of(page).holds(frame)
    labels = chart.locator("text")
    assert labels.count() >= 4
    for i in range(labels.count()):
        assert frame.holds(box_of(labels.nth(i))), labels.nth(i).text_content()
    for axis in ("x-axis", "y-axis"):
        ticks = [box_of(t) for t in chart.locator(f".{axis} .tick-label").all()]
        assert ticks, axis
        assert not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1 :])
    expect(chart.locator(".x-axis .axis-title")).to_have_text("day (UTC)")
    expect(chart.locator(".y-axis .axis-title")).to_have_text("requests")
    return chart.locator(".x-axis .tick-label").all_text_contents()


def test_usage_chart_has_axes_dates_and_an_empty_state(
    page: Page, site: Site, problems: PageProblems
) -> None:
    made = site.accounts.identity.create_account("chart@example.org", "a-good-long-passphrase")
    page.goto("/login")
    page.fill("#email", "chart@example.org")
    page.fill("#password", "a-good-long-passphrase")
    page.click("button[type=submit]")
    chart = page.get_by_test_id("chart")

    # No requests yet: the axes, and a sentence saying so instead of a blank box.
    expect(page.get_by_test_id("chart-empty")).to_have_text("No requests in the last 30 days")
    today = datetime.now(UTC).date()
    dates = [today - timedelta(days=d) for d in (28, 21, 14, 7, 0)]
    assert check_chart_labels(page, chart) == [f"{d:%b} {d.day}" for d in dates]
    expect(chart.locator(".y-axis .tick-label")).to_have_text(["0"])
    empty = screenshot_pixels(chart)
    assert pixels_near(empty, BAR_BLUE) == 0
    assert pixels_near(empty, (0x55, 0x55, 0x55)) > 400  # the two axis lines are painted

    # 3 requests today and 12 a week ago.
    account = site.accounts.authenticate(made.token, "127.0.0.1")
    for _ in range(3):
        site.accounts.settle(site.accounts.reserve(account, 1, "recognize"), 1, "success", 1)
    scan = site.accounts.reserve(account, 12, "enterprise")
    site.accounts.settle(scan, 12, "success", 12)
    with site.accounts.engine.begin() as conn:
        conn.execute(
            update(LedgerEntry)
            .where(LedgerEntry.id == scan.entry_id)
            .values(day=today - timedelta(days=7))
        )
    page.reload()
    expect(page.get_by_test_id("chart-empty")).to_have_count(0)
    check_chart_labels(page, chart)
    expect(chart.locator(".y-axis .tick-label")).to_have_text(["0", "5", "10", "15"])
    bars = chart.locator("rect.bar")
    expect(bars).to_have_count(2)
    week_ago, now = box_of(bars.nth(0)), box_of(bars.nth(1))
    assert bars.nth(0).get_attribute("data-day") == dates[3].isoformat()
    assert now.height > 0 and week_ago.height == pytest.approx(now.height * 4, rel=0.1)
    # The bars sit on the x axis, under their dates' ticks.
    frame = box_of(chart)
    painted = screenshot_pixels(chart)
    for bar, tick in ((week_ago, 3), (now, 4)):
        inside = Box(bar.x - frame.x + 1, bar.y - frame.y + 1, bar.width - 2, bar.height - 2)
        assert pixels_near(painted, BAR_BLUE, inside) >= 0.9 * inside.width * inside.height
        label = box_of(chart.locator(".x-axis .tick-label").nth(tick))
        assert label.x <= bar.x + bar.width / 2 <= label.right
    expect(page.get_by_test_id("today-usage")).to_have_text("3")
    assert problems.csp_violations(page) == []
