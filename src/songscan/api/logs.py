"""The server's logs, set up in one place for `songscan serve` and each of its worker processes.

- The access log: one JSON object per request on logger `songscan.access` (the recognition
  routes add the request id, API method, error code, chunks and billed requests; every other
  request gets a line from `AccessLog`, the middleware), to stderr or to the file named by
  `[log] access_file` in songscan.toml. Uvicorn's own access log is off: it prints every
  query string in full, `api_token` included.
- Everything else (songscan's loggers, Uvicorn's start-up lines and errors, tracebacks) goes to
  stderr.

Every handler formats through `RedactingFormatter`, which masks an `api_token` value written
into any message or traceback (a `url` that carries one in its query, a form echoed in an
exception), so no line holds a usable token.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.logging import DefaultFormatter

from songscan.errors import ConfigError

ACCESS_LOGGER = "songscan.access"
LOGGED = "songscan.access_logged"  # scope key: the route wrote this request's access line

# `api_token=VALUE`, `api_token%3DVALUE` (inside an encoded URL), `"api_token": "VALUE"`,
# `'api_token': 'VALUE'` (a dict's repr).
_TOKEN_IN_TEXT = re.compile(
    r"""(?P<key>api_token(?:=|%3[dD]|["']\s*:\s*["']))(?P<value>[^&\s"'<>;,)\]}]+)"""
)


def redact(text: str) -> str:
    """`text` with every `api_token` value in it masked (`ab***yz`)."""
    if "api_token" not in text:
        return text
    return _TOKEN_IN_TEXT.sub(lambda m: m["key"] + _mask(m["value"]), text)


def _mask(token: str | None) -> str:
    # Imported when first needed: this module is loaded by every worker process (and the
    # supervisor) to set up logging, and the tokens module brings argon2 (~30 ms) with it.
    from songscan.accounts.tokens import mask_token

    return mask_token(token)


class RedactingFormatter(DefaultFormatter):
    """Uvicorn's formatter, with `api_token` values masked in the message and traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class AccessFormatter(logging.Formatter):
    """The access line as it was written (JSON), masked once more to be sure."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def access_file(config: Mapping[str, Any], data_dir: Path) -> Path | None:
    """`[log] access_file` (relative to the data directory), or None for stderr."""
    section = config.get("log", {})
    if not isinstance(section, dict):
        raise ConfigError("[log]: expected a table")
    for key in section:
        if key != "access_file":
            raise ConfigError(f"[log]: unknown key {key!r} (known: access_file)")
    value = section.get("access_file")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"[log].access_file: expected a path, got {value!r}")
    return data_dir / Path(value).expanduser()


def log_config(access_path: Path | None, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for Uvicorn's `log_config`: applied in the server process
    and again in every worker process it starts."""
    if access_path is None:
        access_handler: dict[str, Any] = {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        }
    else:
        # Several worker processes append to one file: each line is one write to an
        # O_APPEND file, so lines do not interleave. Watched: logrotate may move it.
        access_handler = {
            "class": "logging.handlers.WatchedFileHandler",
            "filename": str(access_path),
        }
    default = {"()": "songscan.api.logs.RedactingFormatter", "fmt": "%(levelprefix)s %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": default,
            "access": {"()": "songscan.api.logs.AccessFormatter", "fmt": "%(message)s"},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
            },
            "access": {**access_handler, "formatter": "access"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "songscan": {"handlers": ["default"], "level": level, "propagate": False},
            ACCESS_LOGGER: {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }


def write_access_line(fields: Mapping[str, Any]) -> None:
    logging.getLogger(ACCESS_LOGGER).info(json.dumps(fields))


class AccessLog:
    """ASGI middleware: an access line for each HTTP request that its route did not log itself
    (404, 405, the dashboard, /healthz...), with the query string's token masked."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app sends a response

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not scope.get(LOGGED):
                write_access_line(_plain_line(scope, status, time.perf_counter() - started))


def _plain_line(scope: Scope, status: int, elapsed: float) -> dict[str, Any]:
    client = scope.get("client")
    return {
        "request_id": secrets.token_hex(8),
        "client": client[0] if client else "",
        "http_method": scope.get("method", ""),
        "path": str(scope.get("path", ""))[:200],
        "token": _mask(_query_token(scope.get("query_string", b""))),
        "status": status,
        "duration_ms": round(elapsed * 1000, 1),
    }


def _query_token(query_string: bytes) -> str | None:
    values = parse_qs(query_string.decode("latin-1")).get("api_token")
    return values[-1] if values else None
