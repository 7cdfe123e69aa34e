"""Try-it pages: HTML forms for standard and enterprise recognition, rendered on the server.

`GET /try` shows the forms; a form posts (multipart, like any AudD client) to
`/try/recognize` or `/try/enterprise`, which runs the very request the API would and renders
its reply: a table of the matches, a timeline of where songs play (enterprise: an SVG with a
time axis, see `charts.timeline`) and the raw response, in whichever `response_type` was
asked for (JSON chunks, CSV or segments). No script is needed; the token is typed into the
form and sent with it, never stored.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from songscan.api import recognition
from songscan.api.charts import Span, clock, timeline
from songscan.config import DEFAULT
from songscan.enterprise import ENTERPRISE

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter(include_in_schema=False)

# What the forms send back into their fields (never the token: it is retyped each time).
_KEPT_FIELDS = ("url", "skip", "every", "limit", "skip_first_seconds", "return", "response_type")
_CHECKBOXES = ("accurate_offsets", "use_timecode")
# The result table's columns (header = the reply's key), by method and response type.
_STANDARD_COLUMNS = ("artist", "title", "album", "timecode", "audio_id")
_CHUNK_COLUMNS = (
    "offset",
    "artist",
    "title",
    "album",
    "timecode",
    "score",
    "start_offset",
    "end_offset",
    "audio_id",
)
_SEGMENT_COLUMNS = ("start", "end", "artist", "title", "timecode", "chunks", "score", "audio_id")


def _seconds(clock: str) -> float:
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


def _ms(value: Any, default: float) -> float:
    """A JSON or CSV offset in ms ("" in CSV when not asked for)."""
    return default if value in (None, "") else float(value)


def chunk_spans(best_songs: Iterable[tuple[float, dict[str, Any]]]) -> list[Span]:
    """Spans from each matched chunk's offset (s) and best song: consecutive chunks of one track
    merged (a chunk is `chunk_s` long; start/end offsets refine the ends)."""
    chunk_s = DEFAULT.scan.chunk_s
    spans: list[Span] = []
    for offset, best in best_songs:
        start = offset + _ms(best.get("start_offset"), 0) / 1000
        end = offset + _ms(best.get("end_offset"), chunk_s * 1000) / 1000
        audio_id = int(best.get("audio_id") or 0)
        last = spans[-1] if spans else None
        if last and last.audio_id == audio_id and offset - last.end_s <= chunk_s / 2:
            spans[-1] = Span(last.start_s, end, last.label, audio_id)
        else:
            spans.append(Span(start, end, _label(best), audio_id))
    return spans


def json_spans(result: list[dict[str, Any]]) -> list[Span]:
    """Spans of an enterprise result in JSON chunks."""
    return chunk_spans((_seconds(c["offset"]), c["songs"][0]) for c in result if c["songs"])


def _label(song: dict[str, Any]) -> str:
    return " — ".join(x for x in (song.get("artist"), song.get("title")) if x)


def _enterprise_view(
    body: dict[str, Any] | str, response_type: str
) -> tuple[list[dict[str, Any]], tuple[str, ...], list[Span]]:
    """Rows, columns and timeline spans of a successful enterprise reply."""
    if isinstance(body, str):  # CSV: one row per (chunk, song), best song first
        rows = list(csv.DictReader(io.StringIO(body)))
        firsts: dict[str, dict[str, Any]] = {}
        for row in rows:
            firsts.setdefault(row["offset_seconds"], row)
        return rows, _CHUNK_COLUMNS, chunk_spans((float(k), v) for k, v in firsts.items())
    result = body["result"]
    if response_type == "segments":
        spans = [Span(s["start"], s["end"], _label(s), int(s["audio_id"])) for s in result]
        return result, _SEGMENT_COLUMNS, spans
    rows = [dict(song, offset=chunk["offset"]) for chunk in result for song in chunk["songs"]]
    return rows, _CHUNK_COLUMNS, json_spans(result)


def _render(
    request: Request,
    method: str,
    reply: recognition.Reply | None,
    request_id: str | None = None,
) -> Response:
    body: Any = reply.body if reply else None
    fields = dict(reply.fields) if reply else {}
    error = body.get("error") if isinstance(body, dict) and body.get("status") == "error" else None
    context: dict[str, Any] = {
        "method": method,
        "body": body,
        "error": error,
        "raw": body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False),
        "request_id": request_id,
        "kept": {name: fields.get(name, "") for name in _KEPT_FIELDS},
        "checked": {name: fields.get(name) == "true" for name in _CHECKBOXES},
        "timeline": None,
        "rows": [],
        "columns": _STANDARD_COLUMNS,
    }
    if body is not None and error is None:
        if method == ENTERPRISE:
            rows, columns, spans = _enterprise_view(body, fields.get("response_type", "json"))
            context["rows"], context["columns"] = rows, columns
            context["timeline"] = timeline(spans) if spans else None
        elif isinstance(body.get("result"), dict):
            context["rows"] = [body["result"]]
    return templates.TemplateResponse(request, "tryit_page.html", {"clock": clock, **context})


@router.get("/try", response_class=HTMLResponse)
async def try_page(request: Request) -> Response:
    method = request.query_params.get("method", recognition.RECOGNIZE)
    if method != ENTERPRISE:
        method = recognition.RECOGNIZE
    return _render(request, method, None)


@router.post("/try/recognize", response_class=HTMLResponse)
async def try_recognize(request: Request) -> Response:
    request_id = secrets.token_hex(8)
    reply = await recognition.answer(request, recognition.RECOGNIZE, request_id)
    return _render(request, recognition.RECOGNIZE, reply, request_id)


@router.post("/try/enterprise", response_class=HTMLResponse)
async def try_enterprise(request: Request) -> Response:
    request_id = secrets.token_hex(8)
    reply = await recognition.answer(request, ENTERPRISE, request_id)
    return _render(request, ENTERPRISE, reply, request_id)
