"""Try-it pages: HTML forms for standard and enterprise recognition, rendered on the server.

`GET /try` shows the forms; a form posts (multipart, like any AudD client) to
`/try/recognize` or `/try/enterprise`, which runs the very request the API would and renders
its reply: a table of the matches, a timeline of where songs play (enterprise) and the raw JSON.
No script is needed; the token is typed into the form and sent with it, never stored.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from songscan.api import recognition
from songscan.config import DEFAULT

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter(include_in_schema=False)

# What the forms send back into their fields (never the token: it is retyped each time).
_KEPT_FIELDS = ("url", "skip", "every", "limit", "skip_first_seconds")


@dataclass(frozen=True)
class TimelineBar:
    """One run of consecutive chunks whose best match is the same track."""

    start_s: float
    end_s: float
    label: str
    audio_id: int
    left_pct: float = 0.0
    width_pct: float = 0.0
    colour: int = 0


def _seconds(clock: str) -> float:
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


def timeline(result: list[dict[str, Any]]) -> list[TimelineBar]:
    """Bars for an enterprise result: consecutive matched chunks of one track merged, placed
    by their chunk offsets (a chunk is `chunk_s` long; start/end offsets refine the ends)."""
    chunk_s = DEFAULT.scan.chunk_s
    bars: list[TimelineBar] = []
    for chunk in result:
        if not chunk.get("songs"):
            continue
        best = chunk["songs"][0]
        offset = _seconds(chunk["offset"])
        start = offset + best.get("start_offset", 0) / 1000
        end = offset + best.get("end_offset", chunk_s * 1000) / 1000
        audio_id = int(best.get("audio_id") or 0)
        label = " — ".join(x for x in (best.get("artist"), best.get("title")) if x)
        last = bars[-1] if bars else None
        if last and last.audio_id == audio_id and offset - last.end_s <= chunk_s / 2:
            bars[-1] = TimelineBar(last.start_s, end, last.label, audio_id)
        else:
            bars.append(TimelineBar(start, end, label, audio_id))
    total = max((b.end_s for b in bars), default=0.0) or 1.0
    ids = sorted({b.audio_id for b in bars})
    return [
        TimelineBar(
            b.start_s,
            b.end_s,
            b.label,
            b.audio_id,
            left_pct=round(100 * b.start_s / total, 2),
            width_pct=max(0.5, round(100 * (b.end_s - b.start_s) / total, 2)),
            colour=ids.index(b.audio_id) % 6,
        )
        for b in bars
    ]


def _render(
    request: Request,
    method: str,
    reply: recognition.Reply | None,
    request_id: str | None = None,
) -> Response:
    body: Any = reply.body if reply else None
    fields = dict(reply.fields) if reply else {}
    context: dict[str, Any] = {
        "method": method,
        "body": body,
        "raw": json.dumps(body, indent=2, ensure_ascii=False) if body is not None else "",
        "request_id": request_id,
        "kept": {name: fields.get(name, "") for name in _KEPT_FIELDS},
        "accurate_offsets": fields.get("accurate_offsets") == "true",
        "bars": [],
        "rows": [],
    }
    if isinstance(body, dict) and body.get("status") == "success":
        result = body.get("result")
        if method == recognition.ENTERPRISE and isinstance(result, list):
            context["bars"] = timeline(result)
            context["rows"] = [
                dict(song, offset=chunk["offset"]) for chunk in result for song in chunk["songs"]
            ]
        elif isinstance(result, dict):
            context["rows"] = [result]
    return templates.TemplateResponse(request, "tryit_page.html", context)


@router.get("/try", response_class=HTMLResponse)
async def try_page(request: Request) -> Response:
    method = request.query_params.get("method", recognition.RECOGNIZE)
    if method != recognition.ENTERPRISE:
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
    reply = await recognition.answer(request, recognition.ENTERPRISE, request_id)
    return _render(request, recognition.ENTERPRISE, reply, request_id)
