"""The accounts pages over real HTTP (uvicorn on loopback): forms, CSRF, sessions, payments."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from songscan.accounts.models import AccountRow, StripeEvent
from songscan.api.app import create_app
from tests.accounts.conftest import WEBHOOK_SECRET, Site
from tests.servers import UvicornThread, checkout_completed_event, stripe_signature

PASSWORD = "tuning-fork-42"


def csrf_of(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found
    return found.group(1)


def signup(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    csrf = csrf_of(client, "/signup")
    return client.post("/signup", data={"csrf": csrf, "email": email, "password": password})


def token_of(page: httpx.Response) -> str:
    found = re.search(r'data-testid="token" type="text" readonly value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)


def count_accounts(site: Site) -> int:
    with site.accounts.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(AccountRow)) or 0)


def post_webhook(site: Site, payload: str, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    with site.client() as client:
        return client.post("/stripe/webhook", content=payload, headers=headers)


def test_signup_shows_the_token_once_then_only_masked(site: Site) -> None:
    with site.client() as client:
        page = signup(client, "web@example.org")
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store"
        token = token_of(page)
        account = site.accounts.authenticate(token, "127.0.0.1")
        assert account.email == "web@example.org"
        dashboard = client.get("/dashboard")
        assert dashboard.status_code == 200
        assert token not in dashboard.text
        assert f"{token[:2]}***{token[-2:]}" in dashboard.text
        assert 'data-testid="remaining">300<' in dashboard.text


def test_forms_without_the_csrf_token_are_refused(site: Site) -> None:
    before = count_accounts(site)
    with site.client() as client:
        client.get("/signup")  # has the cookie, but the form below does not carry the token
        refused = client.post(
            "/signup", data={"csrf": "forged.value", "email": "x@example.org", "password": PASSWORD}
        )
        assert refused.status_code == 403
    with site.client() as stranger:  # no cookie at all, as from another site
        refused = stranger.post("/signup", data={"email": "y@example.org", "password": PASSWORD})
        assert refused.status_code == 403
    assert count_accounts(site) == before


def test_bad_signups_say_why_and_change_nothing(site: Site) -> None:
    with site.client() as client:
        signup(client, "dup@example.org")
    before = count_accounts(site)
    with site.client() as client:
        duplicate = signup(client, "dup@example.org")
        assert duplicate.status_code == 400
        assert "already exists" in duplicate.text
        weak = signup(client, "weak@example.org", "short")
        assert weak.status_code == 400
        assert "at least 10 characters" in weak.text
    assert count_accounts(site) == before


def login(client: httpx.Client, email: str, password: str) -> httpx.Response:
    csrf = csrf_of(client, "/login")
    return client.post("/login", data={"csrf": csrf, "email": email, "password": password})


def from_address(site: Site, addr: str) -> httpx.Client:
    """A client whose connections come from `addr` (any 127.x.y.z is this machine)."""
    return httpx.Client(
        base_url=site.base_url,
        transport=httpx.HTTPTransport(local_address=addr),
        follow_redirects=False,
        timeout=30,
    )


def refusal(response: httpx.Response) -> tuple[int, str]:
    found = re.search(r'data-testid="error">([^<]*)<', response.text)
    assert found, response.text
    return response.status_code, found.group(1)


def test_login_and_logout(site: Site) -> None:
    with site.client() as client:
        signup(client, "person@example.org")
    with site.client() as client:
        assert client.get("/dashboard").headers["location"] == "/login"
        ok = login(client, "PERSON@example.org", PASSWORD)
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
        assert client.get("/dashboard").status_code == 200
        csrf = csrf_of(client, "/dashboard")
        assert client.post("/logout", data={"csrf": csrf}).status_code == 303
        assert client.get("/dashboard").status_code == 303


def test_failed_logins_tell_nothing_and_a_stranger_cannot_lock_the_owner_out(site: Site) -> None:
    """OWASP's authentication guidance: an unknown e-mail, a wrong password and a throttled
    attempt get one answer; throttling is per (e-mail, address) and per address."""
    with site.client() as client:
        signup(client, "owner@example.org")
    answers = set()
    with from_address(site, "127.0.0.2") as stranger:
        for _ in range(8):  # past the 5 free attempts: the pair is throttled
            answers.add(refusal(login(stranger, "owner@example.org", "guess-guess-1")))
            answers.add(refusal(login(stranger, "nobody@example.org", "guess-guess-1")))
        # throttled: even the right password from here gets the same answer
        answers.add(refusal(login(stranger, "owner@example.org", PASSWORD)))
    assert len(answers) == 1, answers
    status, message = answers.pop()
    assert status == 400 and "wrong e-mail address or password" in message
    with from_address(site, "127.0.0.3") as owner:  # the owner, elsewhere, is not locked out
        assert login(owner, "owner@example.org", PASSWORD).status_code == 303
        assert owner.get("/dashboard").status_code == 200

    # An address that tries many accounts is throttled as a whole…
    per_address = site.accounts.config.login_attempts_per_address
    with from_address(site, "127.0.0.4") as sprayer:
        for i in range(per_address):
            assert login(sprayer, f"user{i}@example.org", "guess-guess-1").status_code == 400
        assert refusal(login(sprayer, "owner@example.org", PASSWORD)) == (status, message)
    # …and only that address.
    with from_address(site, "127.0.0.5") as owner:
        assert login(owner, "owner@example.org", PASSWORD).status_code == 303


def test_rotating_the_token_on_the_dashboard(site: Site) -> None:
    with site.client() as client:
        old = token_of(signup(client, "rot@example.org"))
        csrf = csrf_of(client, "/dashboard")
        new = token_of(client.post("/dashboard/token", data={"csrf": csrf}))
    assert new != old
    with pytest.raises(Exception, match="unknown"):
        site.accounts.authenticate(old, "127.0.0.1")
    assert site.accounts.authenticate(new, "127.0.0.1").email == "rot@example.org"


def buy(client: httpx.Client, kind: str, item: str) -> httpx.Response:
    csrf = csrf_of(client, "/dashboard")
    return client.post("/dashboard/buy", data={"csrf": csrf, "kind": kind, "item": item})


def test_checkout_then_a_signed_webhook_credits_once(site: Site) -> None:
    with site.client() as client:
        token = token_of(signup(client, "buyer@example.org"))
        redirect = buy(client, "pack", "10k")
    assert redirect.status_code == 303
    assert redirect.headers["location"].startswith(f"{site.stripe.base_url}/pay/cs_test_")
    sent = site.stripe.created[-1]
    assert sent["mode"] == ["payment"]
    assert sent["line_items[0][price_data][unit_amount]"] == ["2000"]
    assert sent["customer_email"] == ["buyer@example.org"]
    session_id = redirect.headers["location"].rsplit("/", 1)[1]
    account = site.accounts.authenticate(token, "127.0.0.1")
    assert site.accounts.remaining(account) == 300  # nothing until Stripe says it is paid

    event = checkout_completed_event(session_id)
    done = post_webhook(site, event, stripe_signature(event, WEBHOOK_SECRET))
    assert done.status_code == 200 and done.json()["outcome"] == "credited 10000 requests"
    assert site.accounts.remaining(account) == 10_300
    # Stripe retries the same event: nothing changes.
    again = post_webhook(site, event, stripe_signature(event, WEBHOOK_SECRET))
    assert again.status_code == 200 and again.json()["outcome"] == "already handled"
    # Another event for the same checkout session (e.g. async_payment_succeeded): still once.
    other = checkout_completed_event(session_id)
    assert post_webhook(site, other, stripe_signature(other, WEBHOOK_SECRET)).json() == {
        "received": True,
        "outcome": "already credited",
    }
    assert site.accounts.remaining(account) == 10_300


def test_forged_stale_and_unknown_webhooks_change_nothing(site: Site) -> None:
    with site.client() as client:
        token = token_of(signup(client, "victim@example.org"))
        session_id = buy(client, "pack", "100k").headers["location"].rsplit("/", 1)[1]
    account = site.accounts.authenticate(token, "127.0.0.1")
    event = checkout_completed_event(session_id)
    forged = post_webhook(site, event, stripe_signature(event, "whsec_not_the_secret"))
    assert forged.status_code == 400 and "signature" in forged.json()["error"]
    assert post_webhook(site, event, None).status_code == 400
    tampered = event.replace("paid", "paid ")
    assert post_webhook(site, tampered, stripe_signature(event, WEBHOOK_SECRET)).status_code == 400
    stale = stripe_signature(event, WEBHOOK_SECRET, timestamp=int(time.time()) - 3600)
    assert post_webhook(site, event, stale).status_code == 400  # a replay from an hour ago
    unknown = checkout_completed_event("cs_test_made_up_elsewhere")
    outcome = post_webhook(site, unknown, stripe_signature(unknown, WEBHOOK_SECRET)).json()
    assert outcome["outcome"] == "unknown checkout"
    assert site.accounts.remaining(account) == 300
    with site.accounts.engine.connect() as conn:  # rejected events are not even recorded
        assert conn.scalar(select(func.count()).select_from(StripeEvent)) == 1


def test_subscribing_to_a_plan_and_cancelling(site: Site) -> None:
    with site.client() as client:
        token = token_of(signup(client, "sub@example.org"))
        redirect = buy(client, "plan", "startup")
        assert buy(client, "plan", "trial").status_code == 400  # nothing to buy there
    assert site.stripe.created[-1]["mode"] == ["subscription"]
    session_id = redirect.headers["location"].rsplit("/", 1)[1]
    event = checkout_completed_event(session_id)
    event = event.replace('"status": "complete"', '"status": "complete", "subscription": "sub_1"')
    assert post_webhook(site, event, stripe_signature(event, WEBHOOK_SECRET)).status_code == 200
    account = site.accounts.authenticate(token, "127.0.0.1")
    assert account.plan == "startup"
    assert site.accounts.remaining(account) == 10_300
    deleted = (
        '{"id": "evt_cancel", "type": "customer.subscription.deleted",'
        ' "data": {"object": {"id": "sub_1", "object": "subscription"}}}'
    )
    assert (
        post_webhook(site, deleted, stripe_signature(deleted, WEBHOOK_SECRET)).json()["outcome"]
        == "plan set back to trial"
    )
    account = site.accounts.authenticate(token, "127.0.0.1")
    assert account.plan == "trial"
    assert site.accounts.remaining(account) == 300  # the plan's monthly requests expired


def cookie_flags(response: httpx.Response) -> dict[str, set[str]]:
    """Each cookie the response sets -> its attribute names, lower-case (`secure`, …)."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        found[name] = {part.split("=")[0].strip().lower() for part in rest.split(";")[1:]}
    return found


def signup_by_hand(client: httpx.Client, email: str, **headers: str) -> list[httpx.Response]:
    """Sign-up and log-out, sending the cookies by hand (a client's jar keeps `Secure`
    cookies for https only, and this test speaks plain HTTP to a server behind a proxy)."""
    page = client.get("/signup", headers=headers)
    csrf = page.cookies["songscan_csrf"]
    cookies = f"songscan_csrf={csrf}"
    made = client.post(
        "/signup",
        data={"csrf": csrf, "email": email, "password": PASSWORD},
        headers={**headers, "Cookie": cookies},
    )
    session = made.cookies["songscan_session"]
    out = client.post(
        "/logout",
        data={"csrf": csrf},
        headers={**headers, "Cookie": f"{cookies}; songscan_session={session}"},
    )
    assert out.status_code == 303
    return [page, made, out]


def test_cookies_are_secure_over_https_behind_a_proxy(site: Site) -> None:
    with site.client() as client:  # plain HTTP: a Secure cookie would never come back
        for response in signup_by_hand(client, "plain@example.org"):
            assert all("secure" not in flags for flags in cookie_flags(response).values())
    # A proxy on this machine (Uvicorn trusts 127.0.0.1) says the browser spoke HTTPS.
    https = {"X-Forwarded-Proto": "https"}
    with site.client() as proxy:
        responses = signup_by_hand(proxy, "tls@example.org", **https)
    set_cookies = [cookie_flags(r) for r in responses]
    assert {name for flags in set_cookies for name in flags} == {
        "songscan_csrf",
        "songscan_session",
    }
    for flags in set_cookies:
        for name, attributes in flags.items():
            assert {"secure", "httponly", "samesite"} <= attributes, (name, attributes)
    # The same header from an address that is not a trusted proxy changes nothing.
    with from_address(site, "127.0.0.2") as stranger:
        page = stranger.get("/signup", headers=https)
        assert "secure" not in cookie_flags(page)["songscan_csrf"]


def test_secure_cookies_can_be_configured(tmp_path: Path) -> None:
    app = create_app(tmp_path, {"accounts": {"secure_cookies": True}})
    with UvicornThread(app) as server, httpx.Client(base_url=server.base_url) as client:
        for response in signup_by_hand(client, "always@example.org"):
            flags = cookie_flags(response)
            assert flags and all("secure" in attributes for attributes in flags.values())


def test_every_page_has_a_content_security_policy(site: Site) -> None:
    """No inline script or style on any page, and the headers that forbid them."""
    with site.client() as client:
        pages = [client.get(path) for path in ("/signup", "/login", "/try", "/docs")]
        pages.append(signup(client, "csp@example.org"))  # the token page
        pages.append(client.get("/dashboard"))
        pages.append(client.get("/try?method=enterprise"))
        pages.append(client.post("/login", data={"email": "x@example.org"}))  # 403 page
        api_reply = client.get("/", params={"api_token": "test"})
    for page in pages:
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "same-origin"
        html = page.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), page.url
        assert "<style" not in html and " style=" not in html, page.url
        assert not re.search(r"\son[a-z]+=", html), page.url
    assert api_reply.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in api_reply.headers  # JSON, not a page


# -- the pages' blocking work stays off the event loop -------------------------------------
# The server is one uvicorn process with one event loop: had a page's handler waited on the
# database or on Stripe in that loop, no other request of the process could be answered
# meanwhile. Each test holds a page's request inside its slow call (a table lock it waits on,
# a Stripe answer held back) and asks for /healthz in the meantime; it passes when /healthz
# finishes first. The held request cannot finish before it is let go, so the order proves the
# overlap; the bound on waiting for /healthz only keeps a failure from hanging.


def finish_order(
    site: Site,
    slow: Callable[[], httpx.Response],
    held: Callable[[], None],
    release: Callable[[], None],
) -> tuple[list[str], httpx.Response]:
    """Send `slow`; once `held()` returned (it is in its slow call), GET /healthz; then
    `release()` it. The order the two finished in, and the slow one's response."""
    finished: list[str] = []
    monitor = httpx.Client(base_url=site.base_url, timeout=120)  # outwaits the bound below
    with monitor, ThreadPoolExecutor(2) as pool:
        slow_call = pool.submit(slow)
        slow_call.add_done_callback(lambda _: finished.append("slow"))
        try:
            held()
            health = pool.submit(monitor.get, "/healthz")
            health.add_done_callback(lambda _: finished.append("healthz"))
            wait([health], timeout=20)  # short of the slow client's 30 s timeout
        finally:
            release()
        assert health.result().status_code == 200
        return finished, slow_call.result()


def finish_order_under_lock(
    site: Site, table: str, slow: Callable[[], httpx.Response]
) -> tuple[list[str], httpx.Response]:
    """`finish_order` with `table` locked (PostgreSQL) until /healthz has been asked for,
    once `slow` waits for the lock."""
    waiting = text(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = CAST(:t AS regclass)"
    )
    with site.accounts.engine.connect() as locker:
        locker.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))

        def held() -> None:
            deadline = time.monotonic() + 60
            while not locker.scalar(waiting, {"t": table}):
                assert time.monotonic() < deadline, f"the request never waited for {table}"
                time.sleep(0.02)

        return finish_order(site, slow, held, locker.rollback)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_log_in_waiting_for_the_database_holds_up_no_other_request(site: Site) -> None:
    with site.client() as client:
        signup(client, "patient@example.org")
        csrf = csrf_of(client, "/login")
        form = {"csrf": csrf, "email": "patient@example.org", "password": PASSWORD}
        order, response = finish_order_under_lock(  # the log-in's first query waits
            site, "login_throttle", lambda: client.post("/login", data=form)
        )
    assert order == ["healthz", "slow"]
    assert response.status_code == 303  # logged in, once the table was free


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_webhook_waiting_for_the_database_holds_up_no_other_request(site: Site) -> None:
    event = checkout_completed_event("cs_unknown")
    headers = {"Stripe-Signature": stripe_signature(event, WEBHOOK_SECRET)}
    with site.client() as client:
        order, response = finish_order_under_lock(  # the event's id is recorded first
            site,
            "stripe_events",
            lambda: client.post("/stripe/webhook", content=event, headers=headers),
        )
    assert order == ["healthz", "slow"]
    assert response.json()["outcome"] == "unknown checkout"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_checkout_waiting_for_stripe_holds_up_no_other_request(site: Site) -> None:
    in_stripe, answer = threading.Event(), threading.Event()

    def hold_back(_form: object) -> None:
        in_stripe.set()
        answer.wait(60)

    def held() -> None:
        assert in_stripe.wait(60), "the checkout never reached Stripe"

    site.stripe.on_create = hold_back
    with site.client() as client:
        signup(client, "waiting-buyer@example.org")
        form = {"csrf": csrf_of(client, "/dashboard"), "kind": "pack", "item": "10k"}
        order, response = finish_order(
            site, lambda: client.post("/dashboard/buy", data=form), held, answer.set
        )
    assert order == ["healthz", "slow"]
    assert response.status_code == 303  # on to Stripe's page, once Stripe answered
