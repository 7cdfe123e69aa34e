"""Errors as the API shows them (api-contract.md §4): one function from an exception to a body.

The HTTP status and headers come from the error itself (`SongscanError.http_status`, `.headers`).
The echo of the request's parameters never shows the token in full nor the `audio` payload.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from songscan.accounts.tokens import mask_token
from songscan.errors import MediaTooLarge, SongscanError

log = logging.getLogger("songscan.api")

# Echoed values are cut to this length (a URL can be long; the echo is for humans).
MAX_ECHO_CHARS = 2048


class BodyTooLarge(MediaTooLarge):
    """The request body is over the server's hard cap: refused with HTTP 413 while streaming."""

    http_status = 413


class UnexpectedError(SongscanError):
    """A bug or an outage: the caller sees code 100 and a request id, the log the traceback."""

    code = 100

    def __init__(self, request_id: str) -> None:
        super().__init__(f"unexpected server error (request id {request_id})")


@dataclass(frozen=True)
class ErrorReply:
    """What the caller is sent for an error: a status, headers and the JSON body."""

    http_status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def error_code(self) -> int:
        return int(self.body["error"]["error_code"])


def echo_params(params: Mapping[str, str]) -> dict[str, str]:
    """The request's parameters as the error body echoes them: token masked, `audio` left out."""
    echoed: dict[str, str] = {}
    for name, value in params.items():
        if name == "audio":
            continue
        if name == "api_token":
            echoed[name] = mask_token(value)
        else:
            echoed[name] = value[:MAX_ECHO_CHARS]
    return echoed


def error_reply(
    exc: SongscanError,
    *,
    params: Mapping[str, str],
    api_method: str,
    http_method: str,
    enterprise: bool,
    execution_time_s: float | None = None,
) -> ErrorReply:
    """The AudD error body for `exc`. `enterprise` switches the echo to `requested_params`
    and adds `execution_time`, as AudD's enterprise endpoint does."""
    body: dict[str, Any] = {
        "status": "error",
        "error": {"error_code": exc.code, "error_message": exc.message},
    }
    echo_key = "requested_params" if enterprise else "request_params"
    body[echo_key] = echo_params(params)
    body["request_api_method"] = api_method
    body["request_http_method"] = http_method
    if enterprise:
        body["execution_time"] = f"{execution_time_s or 0.0:.2f}s"
    return ErrorReply(exc.http_status, body, dict(exc.headers))
