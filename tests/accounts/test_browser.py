"""The dashboard in a real headless Chromium (Debian's), driven by Playwright.

sign up → the token → the token works against the HTTP API (standard and enterprise
recognition over a real socket) → the usage shows up → a signed webhook raises the quota →
the page shows it → rotate the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from songscan.errors import UnknownToken
from tests.accounts.conftest import WEBHOOK_SECRET, Site
from tests.audio import synth_song, write_audio
from tests.servers import checkout_completed_event, stripe_signature


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(base_url=site.base_url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.base_url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


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
def test_signup_to_paid_quota_in_a_browser(page: Page, site: Site, tmp_path: Path) -> None:
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
    assert page.evaluate("navigator.clipboard.readText()") == token

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
