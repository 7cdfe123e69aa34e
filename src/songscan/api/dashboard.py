"""The web side of accounts: sign-up, log-in, the dashboard, buying requests, Stripe's webhook.
The dashboard also shows the account's live streams (their state, the last plays) and sets the
streams' callback URL, under the rules of `setCallbackUrl`.

Server-rendered pages (Jinja2), no inline script or style (the Content-Security-Policy of
`security.py` forbids them): scripts and styles are files under `/static`. A log-in is a
session cookie (HttpOnly, SameSite=Lax, Secure over HTTPS) whose hash is stored in the
database; failed log-ins are throttled by the accounts service. Every form carries a CSRF
token that must equal the signed `songscan_csrf` cookie (double submit, signed with a server
secret). A new or rotated API token is rendered once, in the response to the POST that made
it, never stored or redirected.

Every route is a plain `def`, which Starlette runs in its threadpool: a log-in's argon2, the
database and the call to Stripe never hold up the event loop, which answers every other
request of the process meanwhile. Only reading the posted body is `async`, in the
dependencies `CheckedForm` and `Body`. (A whole route in the threadpool, rather than each
blocking call wrapped in `anyio.to_thread.run_sync`, leaves no call to forget: the session
lookup, the CSRF key and the page's own queries run there too.)
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from songscan.accounts import tokens
from songscan.accounts.payments import Payments, PaymentsUnavailable, WebhookRejected
from songscan.accounts.service import Account, Accounts, LoginRefused, SignupRefused
from songscan.api.charts import usage_chart
from songscan.api.security import secure_cookies
from songscan.errors import InvalidParameters, SongscanError
from songscan.sources import check_url

log = logging.getLogger(__name__)

SESSION_COOKIE = "songscan_session"
CSRF_COOKIE = "songscan_csrf"

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter(include_in_schema=False)  # pages and the webhook: not the API


def _accounts(request: Request) -> Accounts:
    accounts: Accounts = request.app.state.accounts
    return accounts


def _payments(request: Request) -> Payments:
    payments: Payments = request.app.state.payments
    return payments


# -- CSRF -----------------------------------------------------------------------------------


def _csrf_key(request: Request) -> str:
    key: str | None = getattr(request.app.state, "csrf_key", None)
    if key is None:
        key = _accounts(request).identity.server_secret("csrf")
        request.app.state.csrf_key = key
    return key


def _valid_csrf_value(request: Request, value: str | None) -> bool:
    if not value or "." not in value:
        return False
    nonce, signature = value.rsplit(".", 1)
    return tokens.same(signature, tokens.sign(_csrf_key(request), nonce))


def _csrf_value(request: Request) -> str:
    cookie = request.cookies.get(CSRF_COOKIE)
    if _valid_csrf_value(request, cookie):
        assert cookie is not None
        return cookie
    nonce = secrets.token_urlsafe(16)
    return f"{nonce}.{tokens.sign(_csrf_key(request), nonce)}"


async def _posted_fields(request: Request) -> dict[str, str]:
    """The posted form's text fields, read on the event loop."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _checked_form(
    request: Request, fields: Annotated[dict[str, str], Depends(_posted_fields)]
) -> dict[str, str] | None:
    """The posted form when its CSRF token matches the cookie; None when it does not.
    (A plain `def`: checking the cookie may read the CSRF key from the database.)"""
    cookie = request.cookies.get(CSRF_COOKIE)
    sent = fields.get("csrf")
    if not cookie or not sent or not tokens.same(cookie, sent):
        return None
    return fields if _valid_csrf_value(request, cookie) else None


async def _body(request: Request) -> bytes:
    return await request.body()


CheckedForm = Annotated[dict[str, str] | None, Depends(_checked_form)]
Body = Annotated[bytes, Depends(_body)]


# -- rendering ------------------------------------------------------------------------------


def _render(
    request: Request, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    csrf = _csrf_value(request)
    response = templates.TemplateResponse(
        request, template, {"csrf": csrf, **context}, status_code=status_code
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, httponly=True, samesite="lax", secure=_secure_cookies(request)
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _secure_cookies(request: Request) -> bool:
    return secure_cookies(request, _accounts(request).config.secure_cookies)


def _csrf_failed(request: Request) -> HTMLResponse:
    return _render(
        request,
        "message.html",
        status_code=403,
        title="Form expired",
        message="This form has expired or did not come from this site. Reload and try again.",
    )


def _start_session(request: Request, response: Response, account: Account) -> None:
    accounts = _accounts(request)
    session_id = accounts.identity.start_session(account.id)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=accounts.config.session_days * 86400,
        httponly=True,
        samesite="lax",
        secure=_secure_cookies(request),
    )


def _client_addr(request: Request) -> str:
    """The caller's address (behind a trusted proxy, Uvicorn's proxy_headers put the
    forwarded one here)."""
    return request.client.host if request.client else ""


def _current(request: Request) -> Account | None:
    return _accounts(request).identity.session_account(request.cookies.get(SESSION_COOKIE))


# -- pages ----------------------------------------------------------------------------------


@router.get("/signup", response_class=HTMLResponse)
def signup_page(request: Request) -> HTMLResponse:
    return _render(request, "signup.html", error=None, email="")


@router.post("/signup", response_class=HTMLResponse)
def signup(request: Request, form: CheckedForm) -> HTMLResponse:
    if form is None:
        return _csrf_failed(request)
    email = form.get("email", "")
    password = form.get("password", "")
    accounts = _accounts(request)
    try:
        made = accounts.identity.create_account(email, password)
    except SignupRefused as exc:
        return _render(request, "signup.html", 400, error=exc.message, email=email)
    log.info("signup: account %s (%s)", made.account.id, made.account.token_hint)
    response = _render(request, "token.html", token=made.token, new_account=True)
    _start_session(request, response, made.account)
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _render(request, "login.html", error=None, email="")


@router.post("/login", response_model=None)
def login(request: Request, form: CheckedForm) -> Response:
    if form is None:
        return _csrf_failed(request)
    email = form.get("email", "")
    try:
        account = _accounts(request).identity.login(
            email, form.get("password", ""), _client_addr(request)
        )
    except LoginRefused as exc:
        return _render(request, "login.html", 400, error=exc.message, email=email)
    response = RedirectResponse("/dashboard", status_code=303)
    _start_session(request, response, account)
    return response


@router.post("/logout", response_model=None)
def logout(request: Request, form: CheckedForm) -> Response:
    if form is None:
        return _csrf_failed(request)
    _accounts(request).identity.end_session(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE, httponly=True, samesite="lax", secure=_secure_cookies(request)
    )
    return response


@router.get("/dashboard", response_model=None, name="dashboard")
def dashboard(request: Request, paid: str | None = None) -> Response:
    account = _current(request)
    if account is None:
        return RedirectResponse("/login", status_code=303)
    return _dashboard_page(
        request, account, notice="Thank you: your payment is being credited." if paid else None
    )


def _dashboard_page(
    request: Request,
    account: Account,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    status = _accounts(request).ledger.status(account.id)
    payments = _payments(request)
    streams = request.app.state.streams.store
    callback = streams.callback(account.id)
    return _render(
        request,
        "dashboard.html",
        status_code=status_code,
        status=status,
        chart=usage_chart(status.usage_by_day),
        packs=list(payments.config.packs.values()),
        plans=[_accounts(request).plans[name] for name in payments.purchasable_plans()],
        currency=payments.config.currency.upper(),
        payments_enabled=payments.enabled,
        streams=streams.of_account(account.id),
        plays=streams.recent_plays(account.id),
        callback_url=callback.url if callback else "",
        notice=notice,
        error=error,
    )


@router.post("/dashboard/token", response_model=None)
def rotate_token(request: Request, form: CheckedForm) -> Response:
    if form is None:
        return _csrf_failed(request)
    account = _current(request)
    if account is None:
        return RedirectResponse("/login", status_code=303)
    made = _accounts(request).identity.rotate_token(account.id)
    log.info("token rotated: account %s (%s)", account.id, made.account.token_hint)
    return _render(request, "token.html", token=made.token, new_account=False)


@router.post("/dashboard/callback", response_model=None)
def set_callback_url(request: Request, form: CheckedForm) -> Response:
    """`setCallbackUrl` from the dashboard: the same check of the URL; a signing secret set
    through the API is kept."""
    if form is None:
        return _csrf_failed(request)
    account = _current(request)
    if account is None:
        return RedirectResponse("/login", status_code=303)
    api = request.app.state.streams
    url = form.get("url", "").strip()
    try:
        if not url:
            raise InvalidParameters("give the URL that callbacks are sent to")
        check_url(url, api.allow)
    except SongscanError as exc:
        return _dashboard_page(request, account, error=exc.message, status_code=400)
    current = api.store.callback(account.id)
    api.store.set_callback(account.id, url, current.secret if current else None)
    return _dashboard_page(request, account, notice="Callback URL saved.")


@router.post("/dashboard/buy", response_model=None)
def buy(request: Request, form: CheckedForm) -> Response:
    if form is None:
        return _csrf_failed(request)
    account = _current(request)
    if account is None:
        return RedirectResponse("/login", status_code=303)
    dashboard_url = str(request.url_for("dashboard"))
    try:
        url = _payments(request).start_checkout(
            account,
            form.get("kind", ""),
            form.get("item", ""),
            success_url=f"{dashboard_url}?paid=1",
            cancel_url=dashboard_url,
        )
    except (PaymentsUnavailable, InvalidParameters) as exc:
        return _dashboard_page(request, account, error=exc.message, status_code=400)
    except Exception:  # Stripe unreachable or refusing: say so, never a traceback
        log.exception("checkout failed for account %s", account.id)
        return _dashboard_page(
            request,
            account,
            error="the payment page could not be opened; try again later",
            status_code=502,
        )
    return RedirectResponse(url, status_code=303)


@router.post("/stripe/webhook", response_model=None)
def stripe_webhook(request: Request, payload: Body) -> Response:
    try:
        outcome = _payments(request).handle_webhook(
            payload, request.headers.get("Stripe-Signature")
        )
    except WebhookRejected as exc:
        log.warning("stripe webhook rejected: %s", exc.message)
        return JSONResponse({"error": exc.message}, status_code=400)
    log.info("stripe webhook: %s", outcome)
    return JSONResponse({"received": True, "outcome": outcome})
