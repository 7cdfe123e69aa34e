"""Scan results as AudD JSON, CSV (contract §2) and a segments timeline."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from .catalog import METADATA_FIELDS
from .scan import ChunkResult, ScanResult, SongMatch, continues

CSV_COLUMNS = (
    "offset",
    "offset_seconds",
    "artist",
    "title",
    "album",
    "release_date",
    "label",
    "timecode",
    "score",
    "start_offset",
    "end_offset",
    "isrc",
    "upc",
    "song_link",
    "audio_id",
    "speed",
)
ENTERPRISE_METADATA = ("isrc", "upc", "score")
# Consecutive chunks of one song merge into a segment when their positions agree this well.
SEGMENT_TOLERANCE_S = 2.0


@dataclass(frozen=True)
class OutputOptions:
    accurate_offsets: bool = False
    enterprise_metadata: bool = True  # isrc, upc, score (an entitlement on the API)


def to_json(body: Any) -> str:
    """The one JSON serialisation of responses: the CLI prints exactly what the API sends
    (Starlette's JSONResponse: UTF-8, no spaces)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def clock(seconds: float) -> str:
    """`MM:SS`, or `HH:MM:SS` from an hour on (whole seconds, as AudD gives them)."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def song_json(song: SongMatch, opts: OutputOptions, *, standard: bool = False) -> dict[str, Any]:
    meta = song.track.metadata
    out: dict[str, Any] = {
        "artist": meta.artist or "",
        "title": meta.title or "",
        "album": meta.album or "",
        "release_date": meta.release_date or "",
        "label": meta.label or "",
        "timecode": clock(song.timecode_ms / 1000),
        "song_link": meta.song_link or "",
    }
    out["audio_id"] = song.track.audio_id
    if standard:
        return out
    out["timecode_ms"] = song.timecode_ms
    out["speed"] = round(song.speed, 4)
    if opts.enterprise_metadata:
        out["score"] = song.score
        out["isrc"] = meta.isrc or ""
        out["upc"] = meta.upc or ""
    if opts.accurate_offsets:
        out["start_offset"] = song.start_offset_ms
        out["end_offset"] = song.end_offset_ms
    return out


def enterprise_result(result: ScanResult, opts: OutputOptions) -> list[dict[str, Any]]:
    """The `result` list of an enterprise response: matched chunks only."""
    return [
        {"offset": clock(c.chunk.start_s), "songs": [song_json(s, opts) for s in c.songs]}
        for c in result.matched
    ]


def enterprise_response(result: ScanResult, opts: OutputOptions) -> dict[str, Any]:
    return {
        "status": "success",
        "result": enterprise_result(result, opts),
        "execution_time": f"{result.execution_time_s:.2f}s",
    }


def standard_response(songs: list[SongMatch]) -> dict[str, Any]:
    if not songs:
        return {"status": "success", "result": None}
    return {"status": "success", "result": song_json(songs[0], OutputOptions(), standard=True)}


def neutralise(cell: str) -> str:
    """Keep a spreadsheet from reading a cell as a formula (OWASP CSV injection advice)."""
    if cell and cell[0] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + cell
    return cell


def enterprise_csv(result: ScanResult, opts: OutputOptions) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for c in result.matched:
        for song in c.songs:
            j = song_json(song, OutputOptions(accurate_offsets=True, enterprise_metadata=True))
            row = {
                **j,
                "offset": clock(c.chunk.start_s),
                "offset_seconds": f"{c.chunk.start_s:g}",
            }
            if not opts.enterprise_metadata:
                for key in ENTERPRISE_METADATA:
                    row[key] = ""
            if not opts.accurate_offsets:
                row["start_offset"] = row["end_offset"] = ""
            writer.writerow([neutralise(str(row.get(col, ""))) for col in CSV_COLUMNS])
    return buf.getvalue()


@dataclass
class Segment:
    """One song played over consecutive chunks, in file-absolute seconds."""

    audio_id: int
    artist: str
    title: str
    start_s: float
    end_s: float
    timecode_ms: int  # song position at start_s
    chunks: int
    score: int
    speed: float  # how much faster than the catalog's recording it plays (first chunk)


def segments(result: ScanResult) -> list[Segment]:
    """Merge consecutive chunks whose best song is the same track playing on (continuous song
    position), into one played interval each."""
    out: list[Segment] = []
    previous: ChunkResult | None = None
    for c in result.chunks:
        if not c.songs:
            previous = None
            continue
        best = c.songs[0]
        start = c.chunk.start_s + best.start_offset_ms / 1000
        end = c.chunk.start_s + best.end_offset_ms / 1000
        if previous is not None and out and _continues(previous, c):
            seg = out[-1]
            seg.end_s = end
            seg.chunks += 1
            seg.score = max(seg.score, best.score)
        else:
            pos_ms = max(0, best.position_ms + round(best.start_offset_ms * best.speed))
            out.append(
                Segment(
                    audio_id=best.track.audio_id,
                    artist=best.track.metadata.artist or "",
                    title=best.track.metadata.title or "",
                    start_s=round(start, 3),
                    end_s=round(end, 3),
                    timecode_ms=pos_ms,
                    chunks=1,
                    score=best.score,
                    speed=best.speed,
                )
            )
        out[-1].end_s = round(out[-1].end_s, 3)
        previous = c
    return out


def _continues(a: ChunkResult, b: ChunkResult) -> bool:
    sa, sb = a.songs[0], b.songs[0]
    if sa.track.id != sb.track.id or b.chunk.index != a.chunk.index + 1:
        return False
    return continues(sa, a.chunk, sb, b.chunk, SEGMENT_TOLERANCE_S)


def segments_json(result: ScanResult) -> dict[str, Any]:
    return {
        "status": "success",
        "result": [
            {
                "audio_id": s.audio_id,
                "artist": s.artist,
                "title": s.title,
                "start": round(s.start_s, 3),
                "end": round(s.end_s, 3),
                "timecode": clock(s.timecode_ms / 1000),
                "timecode_ms": s.timecode_ms,
                "chunks": s.chunks,
                "score": s.score,
                "speed": round(s.speed, 4),
            }
            for s in segments(result)
        ],
        "execution_time": f"{result.execution_time_s:.2f}s",
    }


__all__ = ["CSV_COLUMNS", "METADATA_FIELDS", "OutputOptions"]
