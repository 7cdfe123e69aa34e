"""The dashboard's live streams in Debian's headless Chromium: the account's streams and their
state, the last plays (a real play over Icecast), and the callback URL set from the page under
the rules of `setCallbackUrl`."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.api.music import excerpt, music
from tests.browser import PageProblems
from tests.streams.conftest import StreamsServer
from tests.streams.radio import CallbackReceiver, Icecast, Piece, SourceClient

PASSWORD = "a-good-long-passphrase"


@pytest.fixture
def site_url(streams_server: StreamsServer) -> str:  # for tests.browser's `page`
    return streams_server.base_url


def log_in(page: Page, server: StreamsServer, email: str) -> None:
    page.goto("/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{server.base_url}/dashboard")


def reload_until(page: Page, cell: Callable[[], Locator], text: str, within_s: float = 20) -> bool:
    """Reload the page until `cell` reads `text` (the page is drawn on the server)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        page.reload()
        if cell().count() and cell().inner_text().strip() == text:
            return True
        time.sleep(0.5)
    return False


def test_dashboard_lists_streams_plays_and_sets_the_callback_url(
    page: Page, streams_server: StreamsServer, icecast: Icecast
) -> None:
    problems = PageProblems(page)
    made = streams_server.accounts.identity.create_account(
        "streams@example.org", PASSWORD, "enterprise"
    )
    token = made.token
    log_in(page, streams_server, "streams@example.org")
    expect(page.get_by_test_id("no-streams")).to_be_visible()
    expect(page.get_by_test_id("no-plays")).to_be_visible()

    # a callback URL the server may not call (a private address): refused, nothing saved
    page.fill("#callback-url", "http://10.0.0.1/hook")
    page.get_by_test_id("save-callback").click()
    expect(page.get_by_test_id("error")).to_contain_text("10.0.0.1")
    assert streams_server.call("getCallbackUrl", token)["error"]["error_code"] == 19  # type: ignore[index]

    songs = streams_server.songs
    programme = [
        Piece("unknown", music(951, 8.0)),
        Piece("song3", excerpt(songs[3], 0.0, 24.0)),
        Piece("unknown", music(952, 14.0)),
    ]
    with CallbackReceiver() as receiver:
        page.fill("#callback-url", receiver.url())
        page.get_by_test_id("save-callback").click()
        expect(page.get_by_test_id("notice")).to_have_text("Callback URL saved.")
        assert streams_server.call("getCallbackUrl", token)["result"] == receiver.url()
        expect(page.get_by_test_id("callback-url")).to_have_value(receiver.url())

        source = SourceClient(icecast, "dash.mp3", programme).play()
        added = streams_server.call("addStream", token, url=icecast.url("dash.mp3"), radio_id=7)
        assert added["status"] == "success", added
        try:
            row = page.locator("[data-testid=streams] tr[data-radio-id='7']")
            assert reload_until(page, lambda: row.get_by_test_id("stream-state"), "running")
            expect(row).to_contain_text(icecast.url("dash.mp3"))
            assert receiver.wait_for(lambda r: r.results(), timeout_s=60)
            page.reload()
            plays = page.get_by_test_id("plays")
            expect(plays).to_contain_text("Song 3")
            length = receiver.results()[0]["play_length"]
            expect(plays.locator("tbody tr").first).to_contain_text(f"{length} s")
            source.wait()
        finally:
            streams_server.call("deleteStream", token, radio_id=7)
    assert problems.csp_violations(page) == []
    # the refused URL's page answers 400, which Chromium logs; nothing else went wrong
    assert [e for e in problems.console_errors if "status of 400" not in e] == []
