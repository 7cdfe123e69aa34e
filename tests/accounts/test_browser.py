"""The dashboard in a real headless Chromium (Debian's), driven by Playwright.

sign up → the token → the token works with the accounts service the API calls → the usage
shows up → a signed webhook raises the quota → the page shows it → rotate the token.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from songscan.errors import UnknownToken
from tests.accounts.conftest import WEBHOOK_SECRET, Site
from tests.servers import checkout_completed_event, stripe_signature

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(base_url=site.base_url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.base_url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def use_the_api(site: Site, token: str, method: str, requests: int, used: int) -> None:
    """What the API does per request, through the same service object the app uses."""
    account = site.accounts.authenticate(token, "127.0.0.1")
    site.accounts.check_rate(account)
    reservation = site.accounts.reserve(account, requests, method)
    site.accounts.settle(reservation, used, "success", chunks=used)


@pytest.mark.slow
def test_signup_to_paid_quota_in_a_browser(page: Page, site: Site) -> None:
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

    use_the_api(site, token, "recognize", 1, 1)
    use_the_api(site, token, "enterprise", 5, 4)  # 5 chunks planned, 4 recognised: 4 billed

    page.get_by_test_id("continue").click()
    expect(page.get_by_test_id("remaining")).to_have_text("295")
    expect(page.get_by_test_id("plan")).to_have_text("Trial")
    expect(page.get_by_test_id("today-usage")).to_have_text("5")
    rows = page.get_by_test_id("recent").locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("enterprise")
    expect(rows.nth(0)).to_contain_text("4")
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
    expect(page.get_by_test_id("remaining")).to_have_text("10,295")
    expect(page.get_by_test_id("credits")).to_contain_text("+10,000")

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("rotate").click()
    new_token = page.get_by_test_id("token").input_value()
    assert new_token != token
    with pytest.raises(UnknownToken):
        site.accounts.authenticate(token, "127.0.0.1")
    use_the_api(site, new_token, "recognize", 1, 1)

    page.goto("/dashboard")
    expect(page.get_by_test_id("remaining")).to_have_text("10,294")
    page.click("text=Log out")
    expect(page).to_have_url(f"{site.base_url}/login")
    page.goto("/dashboard")
    expect(page).to_have_url(f"{site.base_url}/login")
