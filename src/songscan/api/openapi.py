"""The OpenAPI document and its page: the recognition methods' parameters and error codes,
and `/docs` (Swagger UI) served without any network.

The routes read their parameters themselves (query string, urlencoded or multipart, GET or
POST, as AudD does), so FastAPI cannot infer them: they are declared here, once.

FastAPI's own /docs loads Swagger UI from a CDN and starts it with an inline script: blank
without internet, and refused by the pages' Content-Security-Policy. `install_docs` serves
the Swagger UI files that the `fastapi-offline` package ships, started by a script file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from songscan.catalog import METADATA_FIELDS

STATIC_URL = "/static"  # this package's scripts and styles (`api/static`)
SWAGGER_URL = "/static/swagger"  # swagger-ui-bundle.js, swagger-ui.css, favicon.png
STATIC_DIR = Path(__file__).parent / "static"

_templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def install_docs(app: FastAPI) -> None:
    """Mount the pages' static files and Swagger UI's, and the `/docs` page.
    The app must be made with `docs_url=None, redoc_url=None`."""
    # Swagger's mount first: "/static" would otherwise take its paths too.
    app.mount(SWAGGER_URL, StaticFiles(packages=[("fastapi_offline", "static")]), name="swagger")
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs_page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _templates.TemplateResponse(
            request,
            "docs.html",
            {
                "openapi_url": f"{root}{app.openapi_url}",
                "assets": f"{root}{SWAGGER_URL}",
                "static": f"{root}{STATIC_URL}",
            },
        )


# (name, type, description); types are OpenAPI schema types
COMMON = [
    ("api_token", "string", "The caller's token (required; `test` when the server allows it)."),
    ("url", "string", "Media URL, or a web page that embeds audio or video."),
    ("file", "binary", "The audio or video, uploaded as multipart (POST)."),
    ("return", "string", "Comma-separated metadata blocks (returned when the catalog has them)."),
]
STANDARD_PARAMS = [
    *COMMON,
    ("audio", "string", "The audio as a base64 string (POST)."),
    (
        "method",
        "string",
        "`recognize` (default), `upload`, or a streams method (`addStream`, `getStreams`, ...).",
    ),
]
ENTERPRISE_PARAMS = [
    *COMMON,
    ("every", "integer", "How many 12-second chunks in a row are recognised (default 1)."),
    ("skip", "integer", "How many chunks are then passed over (default 0)."),
    ("limit", "integer", "At most this many chunks are recognised (and billed)."),
    ("skip_first_seconds", "number", "Seconds of the file before chunk 0 (default 0)."),
    ("use_timecode", "boolean", "Take skip_first_seconds from the URL's t/time_continue/start."),
    ("accurate_offsets", "boolean", "Add start_offset/end_offset (ms inside the chunk)."),
    ("response_type", "string", "`json` (default), `csv`, or `segments` (songscan extension)."),
    (
        "async",
        "boolean",
        "`true`: run as a long job (songscan extension): the answer is the job "
        "(`job_id`, `state`), to poll at `/enterprise/jobs/{job_id}`.",
    ),
]
UPLOAD_PARAMS = [
    *COMMON[:3],
    ("audio_id", "integer", "The caller's id for this track; the same id replaces it."),
    *[
        (name, "string", f"Track metadata: {name} (songscan extension).")
        for name in METADATA_FIELDS
    ],
]

ERROR_CODES = {
    900: "token unknown, revoked or malformed",
    901: "no api_token",
    902: "the account's request quota is used up",
    904: "the method or option is not available to this token",
    50: "contradicting or invalid parameters",
    600: "the URL is malformed, unreachable, not allowed, or yields no media",
    700: "no url, file or audio was sent",
    500: "the media cannot be decoded as audio",
    400: "the media is too big for this endpoint",
    300: "fingerprinting failed",
    100: "unexpected server error (with a request id)",
}


def _schema(kind: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary"} if kind == "binary" else {"type": kind}


def operation(params: list[tuple[str, str, str]]) -> dict[str, Any]:
    """`openapi_extra` for a route taking `params` in the query string or the body."""
    errors = "\n".join(f"- `{code}`: {text}" for code, text in ERROR_CODES.items())
    body_schema = {
        "type": "object",
        "properties": {n: {**_schema(k), "description": d} for n, k, d in params},
    }
    return {
        "parameters": [
            {
                "name": n,
                "in": "query",
                "required": n == "api_token",
                "description": d,
                "schema": {"type": "string"} if k == "binary" else _schema(k),
            }
            for n, k, d in params
            if k != "binary"
        ],
        "requestBody": {
            "content": {
                "multipart/form-data": {"schema": body_schema},
                "application/x-www-form-urlencoded": {"schema": body_schema},
            }
        },
        "responses": {
            "200": {
                "description": "`status: success` with the result, or `status: error` with "
                "`error.error_code`:\n" + errors,
            },
            "413": {"description": "the body is over the server's hard cap"},
            "429": {"description": "rate limited; see `Retry-After`"},
        },
    }


JOB_STATES = "`queued`, `running`, `done`, `failed` or `cancelled`"


def job_operation(*, listing: bool = False) -> dict[str, Any]:
    """`openapi_extra` for the long-job routes: `api_token` (and `limit` for the list)."""
    params = [("api_token", "string", "The caller's token: a job is seen by its account only.")]
    if listing:
        params.append(("limit", "integer", "At most this many jobs, newest first (default 100)."))
    errors = "\n".join(f"- `{code}`: {ERROR_CODES[code]}" for code in (900, 901, 904, 100))
    return {
        "parameters": [
            {
                "name": n,
                "in": "query",
                "required": n == "api_token",
                "description": d,
                "schema": _schema(k),
            }
            for n, k, d in params
        ],
        "responses": {
            "200": {
                "description": "`status: success` with the job: `job_id`, `state` "
                f"({JOB_STATES}), `progress` (`chunks_done`, `chunks_total`, `fraction`), "
                "`created_at`, `started_at`, `finished_at`, `billed`, and when done `response` "
                "(the synchronous call's body), when failed `error`; or `status: error`:\n"
                + errors
                + "\n- `50`: no such job for this token, or it has no result yet",
            },
            "429": {"description": "rate limited; see `Retry-After`"},
        },
    }
