"""What every page tells the browser: a Content-Security-Policy and its companions, and when
cookies are `Secure`.

Pages load scripts and styles only from this server (`/static`), never inline, so the policy
needs no nonce. A form may post to this server and be redirected to the Stripe checkout page.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STRIPE_API = "https://api.stripe.com"
STRIPE_CHECKOUT = "https://checkout.stripe.com"


def checkout_origin(stripe_api_base: str) -> str:
    """Where "Buy" redirects to: Stripe's checkout page, or the stand-in's own origin when
    `[stripe] api_base` points elsewhere (a test or a staging stand-in)."""
    if stripe_api_base.rstrip("/") == STRIPE_API:
        return STRIPE_CHECKOUT
    parts = urlsplit(stripe_api_base)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(form_targets: str) -> str:
    # img-src data: for the icons inside Swagger UI's stylesheet; connect-src 'self' for its
    # fetch of /openapi.json and its "Try it out".
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            f"form-action 'self' {form_targets}",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )


class SecurityHeaders:
    """ASGI middleware: `nosniff` on every response; on HTML pages also the CSP, no framing
    and no referrer beyond this site. Pure ASGI, so streamed API replies pass untouched."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.page_headers = {
            "Content-Security-Policy": csp,
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").startswith("text/html"):
                    for name, value in self.page_headers.items():
                        headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def secure_cookies(request: Request, always: bool) -> bool:
    """Cookies are `Secure` when the request came over HTTPS (behind a proxy, Uvicorn's
    proxy_headers take the scheme from a trusted `X-Forwarded-Proto`) or when configured."""
    return always or request.url.scheme == "https"
