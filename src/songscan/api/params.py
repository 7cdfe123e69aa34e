"""Request parameters: read from the query string and the body, media streamed to disk.

AudD clients send parameters in the query string, an `application/x-www-form-urlencoded` body
or a `multipart/form-data` body, by GET or POST. `read_request` takes all three: the body is
parsed as it arrives (python-multipart's streaming parsers), a `file` part goes straight to a
file, an `audio` value (base64) is decoded into a file as it streams, and the body is refused
with `BodyTooLarge` (HTTP 413) as soon as it passes the server's hard cap, so no upload is ever
held whole in memory. Body values override query-string values of the same name.

The typed readers of the fields (`int_param`, `bool_param`, ...) are `songscan.fields`'s.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, QuerystringParser, parse_options_header
from starlette.requests import Request

from songscan.api.errors import BodyTooLarge
from songscan.errors import InvalidParameters

# The typed readers' older home (callers may still import them from here).
from songscan.fields import bool_param as bool_param
from songscan.fields import choice_param as choice_param
from songscan.fields import float_param as float_param
from songscan.fields import int_param as int_param
from songscan.fields import text_param as text_param

# Non-media fields are small; these bound what a caller can make the server hold in memory.
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 200
MEDIA_FIELDS = ("file", "audio")

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


@dataclass
class ParsedRequest:
    """The parameters of one request and the media it carried, if any (a file on disk)."""

    fields: dict[str, str] = field(default_factory=dict)
    media: Path | None = None
    media_field: str | None = None  # "file" or "audio"
    media_bytes: int = 0
    body_bytes: int = 0


class _Base64Writer:
    """Decodes base64 (standard or URL-safe alphabet, any line breaks, padding optional) into a
    file as it streams; with `percent_encoded`, undoes form URL-encoding first. `+` is kept as
    `+`: base64 has no spaces, so an unencoded `+` can only have meant itself."""

    def __init__(self, out: IO[bytes], *, percent_encoded: bool) -> None:
        self.out = out
        self.percent_encoded = percent_encoded
        self._pending = b""  # an incomplete %XX escape
        self._rest = b""  # base64 characters short of a 4-character group
        self.written = 0
        self._started = False

    def write(self, data: bytes) -> int:
        if self.percent_encoded:
            data = self._pending + data
            cut = data.rfind(b"%", max(0, len(data) - 2))
            if cut != -1:
                data, self._pending = data[:cut], data[cut:]
            else:
                self._pending = b""
            data = urllib.parse.unquote_to_bytes(data)
        data = data.translate(None, b" \t\r\n").replace(b"-", b"+").replace(b"_", b"/")
        if not self._started:
            # A data URL (`data:audio/mpeg;base64,...`) is the same payload with a prefix.
            head, self._rest = self._rest + data, b""
            if len(head) < 5 or (head.startswith(b"data:") and b"," not in head):
                if len(head) > 1024:
                    raise InvalidParameters("audio is a data URL without a payload")
                self._rest = head
                return 0
            if head.startswith(b"data:"):
                head = head[head.index(b",") + 1 :]
            self._started = True
            data = head
        buf = self._rest + data
        usable = len(buf) - len(buf) % 4
        self._rest = buf[usable:]
        return self._emit(buf[:usable])

    def _emit(self, text: bytes) -> int:
        if not text:
            return 0
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParameters("audio is not valid base64") from None
        self.out.write(decoded)
        self.written += len(decoded)
        return len(decoded)

    def close(self) -> None:
        if self._pending:
            raise InvalidParameters("audio is not valid base64 (a broken %-escape)")
        rest = self._rest
        if not self._started and rest.startswith(b"data:"):
            raise InvalidParameters("audio is a data URL without a payload")
        self._rest = b""
        if len(rest) % 4 == 1:
            raise InvalidParameters("audio is not valid base64 (truncated)")
        if rest:
            self._emit(rest + b"=" * (-len(rest) % 4))


class _FormCollector:
    """Receives the parts of a body (from either parser) and routes each one: small fields into
    memory, media into a file under `dest_dir`."""

    def __init__(self, dest_dir: Path) -> None:
        self.dest_dir = dest_dir
        self.fields: dict[str, str] = {}
        self.media: Path | None = None
        self.media_field: str | None = None
        self._count = 0
        self._value = bytearray()
        self._sink: IO[bytes] | None = None
        self._b64: _Base64Writer | None = None
        self._media_bytes = 0

    @property
    def media_bytes(self) -> int:
        return self._media_bytes

    # -- one part (or one urlencoded field) at a time -----------------------------------------
    def begin_field(self, name: str, filename: str | None, *, percent_encoded: bool) -> None:
        self._count += 1
        if self._count > MAX_FIELDS:
            raise InvalidParameters(f"more than {MAX_FIELDS} parameters")
        self._name = name
        self._value = bytearray()
        self._sink = None
        self._b64 = None
        self._percent = percent_encoded
        self._filename = filename
        is_file = name == "file" or (name == "audio" and filename is not None)
        if is_file or name == "audio":
            self._open_media(name, filename)
            if not is_file:
                assert self._sink is not None
                self._b64 = _Base64Writer(self._sink, percent_encoded=percent_encoded)
        elif filename is not None:
            self._name = ""  # a file under another name: read past it, keep nothing

    def _open_media(self, name: str, filename: str | None) -> None:
        self._drop_media()  # a second file or audio replaces the first
        stem, suffix = "upload", ""
        if filename:
            clean = Path(_SAFE_NAME.sub("_", Path(filename).name)).name.strip(". ")
            if clean:
                stem = Path(clean).stem[:100] or stem
                suffix = Path(clean).suffix[:8]
        self.media = self.dest_dir / f"{stem}{suffix}"
        self.media_field = name
        self._media_bytes = 0
        self._sink = self.media.open("wb")

    def _drop_media(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self.media is not None:
            self.media.unlink(missing_ok=True)
            self.media = None
            self.media_field = None

    def data(self, chunk: bytes) -> None:
        if self._b64 is not None:
            self._media_bytes += self._b64.write(chunk)
        elif self._sink is not None:
            self._sink.write(chunk)
            self._media_bytes += len(chunk)
        elif self._name:
            if len(self._value) + len(chunk) > MAX_FIELD_BYTES:
                raise InvalidParameters(f"parameter {self._name!r} is too long")
            self._value.extend(chunk)

    def end_field(self) -> None:
        if self._b64 is not None:
            self._b64.close()
            self._media_bytes = self._b64.written
        if self._sink is not None:
            self._sink.close()
            if self._media_bytes == 0 and not self._filename:
                self._drop_media()  # an empty file input or `audio=`: nothing was sent
        elif self._name:
            raw = bytes(self._value)
            if self._percent:
                raw = urllib.parse.unquote_to_bytes(raw.replace(b"+", b" "))
            self.fields[self._name] = raw.decode("utf-8", "replace")
        self._sink = None
        self._b64 = None
        self._value = bytearray()

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


class _Body:
    """Feeds the body to the parser for its Content-Type."""

    def __init__(self, content_type: str, collector: _FormCollector) -> None:
        self.collector = collector
        kind, options = parse_options_header(content_type)
        self.parser: Any = None
        if kind == b"multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise InvalidParameters("a multipart body needs a boundary")
            self._headers: dict[bytes, bytes] = {}
            self._header_field = bytearray()
            self._header_value = bytearray()
            self.parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field_data,
                    "on_header_value": self._header_value_data,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._data,
                    "on_part_end": collector.end_field,
                },
            )
        elif kind == b"application/x-www-form-urlencoded":
            self._name = bytearray()
            self._in_field = False
            self._started = False
            self.parser = QuerystringParser(
                {
                    "on_field_start": self._qs_start,
                    "on_field_name": self._qs_name,
                    "on_field_data": self._qs_data,
                    "on_field_end": self._qs_end,
                }
            )

    @property
    def wanted(self) -> bool:
        return self.parser is not None

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as exc:
            raise InvalidParameters(f"the request body is malformed ({exc})") from None

    def finish(self) -> None:
        try:
            self.parser.finalize()
        except FormParserError as exc:
            raise InvalidParameters(f"the request body is malformed ({exc})") from None

    # -- multipart ------------------------------------------------------------------------------
    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field.extend(data[start:end])

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value.extend(data[start:end])

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field = bytearray()
        self._header_value = bytearray()

    def _headers_finished(self) -> None:
        _, disposition = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = disposition.get(b"filename")
        filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
        self.collector.begin_field(name, filename, percent_encoded=False)

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.collector.data(data[start:end])

    # -- urlencoded -----------------------------------------------------------------------------
    def _qs_start(self) -> None:
        self._name = bytearray()
        self._started = False

    def _qs_name(self, data: bytes, start: int, end: int) -> None:
        self._name.extend(data[start:end])

    def _qs_begin(self) -> None:
        if not self._started:
            self._started = True
            name = urllib.parse.unquote_plus(bytes(self._name).decode("utf-8", "replace"))
            self.collector.begin_field(name, None, percent_encoded=True)

    def _qs_data(self, data: bytes, start: int, end: int) -> None:
        self._qs_begin()
        self.collector.data(data[start:end])

    def _qs_end(self) -> None:
        self._qs_begin()
        self.collector.end_field()


async def read_request(request: Request, dest_dir: Path, *, max_body_bytes: int) -> ParsedRequest:
    """The request's parameters (query string, then body) and its media, written under
    `dest_dir` (which the caller owns and removes). Raises BodyTooLarge past `max_body_bytes`,
    InvalidParameters for a malformed body; Starlette's ClientDisconnect when the client goes."""
    parsed = ParsedRequest()
    for name, value in request.query_params.multi_items():
        if name == "audio":
            continue  # decoded below, into a file like any other audio
        parsed.fields[name] = value
    collector = _FormCollector(dest_dir)
    try:
        query_audio = request.query_params.get("audio")
        if query_audio:
            collector.begin_field("audio", None, percent_encoded=False)
            collector.data(query_audio.replace(" ", "+").encode())
            collector.end_field()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise BodyTooLarge(_too_large(max_body_bytes))
        body = _Body(request.headers.get("content-type", ""), collector)
        if body.wanted:
            async for chunk in request.stream():
                parsed.body_bytes += len(chunk)
                if parsed.body_bytes > max_body_bytes:
                    raise BodyTooLarge(_too_large(max_body_bytes))
                if chunk:
                    body.write(chunk)
            body.finish()
    finally:
        collector.close()
    parsed.fields.update(collector.fields)
    parsed.media = collector.media
    parsed.media_field = collector.media_field
    parsed.media_bytes = collector.media_bytes
    return parsed


def _too_large(limit: int) -> str:
    return f"the request body is over this server's limit of {_size(limit)}"


def _size(n_bytes: int) -> str:
    mb = n_bytes / (1024 * 1024)
    return f"{mb:g} MB" if mb >= 1 else f"{n_bytes} bytes"
