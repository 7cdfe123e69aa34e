"""Streamed HTTP download of a media URL into a temp file, every redirect hop re-checked.

The body goes straight to disk in blocks (never whole in memory); the size cap is
checked against Content-Length before reading and against the running count while
reading; any failure removes the partial file.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from songscan.errors import MediaTooLarge, UrlFailed
from songscan.sources.netguard import (
    NO_EXCEPTIONS,
    AllowList,
    Deadline,
    check_url,
    guarded_client,
)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SNIFF_BYTES = 64
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")


@dataclass
class OpenedResponse:
    """A response whose status is 2xx, with its first bytes already read for sniffing."""

    url: str
    response: httpx.Response
    head: bytes
    rest: Iterator[bytes]

    @property
    def content_type(self) -> str:
        value = self.response.headers.get("content-type", "")
        return value.split(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.response.headers.get("content-length", "")
        return int(value) if value.isdigit() else None


def _transport_failure(exc: httpx.HTTPError, deadline: Deadline) -> UrlFailed:
    if isinstance(exc, httpx.TimeoutException) or deadline.expired():
        return deadline.failure()
    if isinstance(exc, httpx.ConnectError):
        return UrlFailed("the URL's server cannot be reached")
    return UrlFailed(f"fetching the URL failed: {type(exc).__name__}")


@contextlib.contextmanager
def open_url(
    client: httpx.Client,
    url: str,
    *,
    allow: AllowList,
    deadline: Deadline,
    max_redirects: int,
    headers: Mapping[str, str] | None = None,
) -> Iterator[OpenedResponse]:
    """GET `url`, following up to `max_redirects` redirects, each hop checked by
    `check_url` before it is requested. UrlFailed on 4xx/5xx, bad hops, or timeouts."""
    hop = check_url(url, allow).url
    try:
        for _ in range(max_redirects + 1):
            request = client.build_request("GET", hop, headers=headers)
            response = client.send(request, stream=True)
            try:
                if response.status_code in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise UrlFailed(f"the URL redirects ({response.status_code}) nowhere")
                    try:
                        target = str(response.url.join(location))
                    except httpx.InvalidURL as exc:
                        raise UrlFailed("the URL redirects to a malformed URL") from exc
                    hop = check_url(target, allow).url
                    continue
                if response.status_code >= 400:
                    raise UrlFailed(
                        f"the URL answered HTTP {response.status_code} {response.reason_phrase}"
                    )
                if not 200 <= response.status_code < 300:
                    raise UrlFailed(f"the URL answered HTTP {response.status_code}")
                chunks = response.iter_bytes()
                head = b""
                for chunk in chunks:
                    head += chunk
                    if len(head) >= SNIFF_BYTES:
                        break
                yield OpenedResponse(hop, response, head, chunks)
                return
            finally:
                response.close()
        raise UrlFailed(f"the URL redirects more than {max_redirects} times")
    except httpx.HTTPError as exc:
        raise _transport_failure(exc, deadline) from exc


def _suffix_for(url: str) -> str:
    suffix = Path(httpx.URL(url).path).suffix
    return suffix.lower() if _SUFFIX.fullmatch(suffix) else ".media"


def save_response(
    opened: OpenedResponse, dest_dir: Path, *, max_bytes: int, deadline: Deadline
) -> Path:
    """Write the rest of `opened` (after its sniffed head) to a new file in `dest_dir`;
    MediaTooLarge past `max_bytes`; the file is removed on any failure."""
    declared = opened.content_length
    if declared is not None and declared > max_bytes:
        raise MediaTooLarge(f"the media is {declared} bytes, over the limit of {max_bytes}")
    fd, name = tempfile.mkstemp(prefix="songscan-", suffix=_suffix_for(opened.url), dir=dest_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            written = 0
            for chunk in _chain(opened.head, opened.rest):
                written += len(chunk)
                if written > max_bytes:
                    raise MediaTooLarge(f"the media is over the limit of {max_bytes} bytes")
                if deadline.expired():
                    raise deadline.failure()
                out.write(chunk)
        if written == 0:
            raise UrlFailed("the URL yields an empty body")
    except httpx.HTTPError as exc:
        path.unlink(missing_ok=True)
        raise _transport_failure(exc, deadline) from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def download_within(
    url: str,
    dest_dir: Path,
    *,
    max_bytes: int,
    deadline: Deadline,
    allow: AllowList,
    max_redirects: int = 5,
    headers: Mapping[str, str] | None = None,
) -> Path:
    """`download` against an existing deadline, with extra request headers."""
    with (
        guarded_client(allow, deadline) as client,
        open_url(
            client,
            url,
            allow=allow,
            deadline=deadline,
            max_redirects=max_redirects,
            headers=headers,
        ) as opened,
    ):
        return save_response(opened, Path(dest_dir), max_bytes=max_bytes, deadline=deadline)


def download(
    url: str,
    dest_dir: str | os.PathLike[str],
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int = 5,
    allow: AllowList = NO_EXCEPTIONS,
) -> Path:
    """Download `url` into a new file in `dest_dir` and return its path.

    Raises UrlFailed (bad or disallowed URL or redirect hop, HTTP error status,
    unreachable, over `timeout_s` in total) or MediaTooLarge (over `max_bytes`).
    """
    return download_within(
        url,
        Path(dest_dir),
        max_bytes=max_bytes,
        deadline=Deadline(timeout_s),
        allow=allow,
        max_redirects=max_redirects,
    )
