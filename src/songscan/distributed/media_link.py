"""The links by which Celery workers read a scan's media from the API node that holds it.

Workers share no disk with the API node. For each scan the node signs a token naming the file
and when the token expires (HMAC-SHA256 with the node's `media_secret`); the worker sends it in
an `Authorization: Bearer` header to the node's internal route (`songscan.api.worker_media`),
which serves the file with range requests. The token is never part of a URL, so no access
line, proxy log or exception message carries it. The path inside it cannot be chosen by anyone
without the secret (the route serves only what this node signed, and only regular files).

A worker reads the file through `RemoteFile`: a seekable file object over HTTP range requests
that fetches only the ranges the demuxer asks for, a block at a time, for PyAV to open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from songscan.errors import SongscanError
from songscan.media import Media

ROUTE = "/internal/media"  # on the API node
BLOCK_BYTES = 1 << 20  # read ahead: one request per MiB read in order (PyAV asks for 32 KiB)
_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class BadMediaLink(SongscanError):
    """A media token that this node did not sign, that has expired, or that is malformed."""

    default_message = "the media link is invalid or has expired"


class MediaUnreachable(SongscanError):
    """A worker could not read a scan's media from its API node."""

    default_message = "the media could not be read from the API node"


@dataclass(frozen=True)
class MediaLink:
    """Where a worker reads one scan's file: the node's route, and the token to show it."""

    url: str
    token: str


def sign(secret: str, path: Path, expires_at: float) -> str:
    """A token for `path`, valid until `expires_at` (a Unix time)."""
    claims = json.dumps({"path": str(path), "exp": int(expires_at)}, separators=(",", ":"))
    body = _b64(claims.encode())
    return f"{body}.{_b64(_mac(secret, body))}"


def verify(secret: str, token: str, now: float | None = None) -> Path:
    """The file a token names; BadMediaLink unless this node signed it and it has not expired."""
    body, _, mac = token.partition(".")
    try:
        given = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
    except ValueError:
        raise BadMediaLink() from None
    if not body or not hmac.compare_digest(given, _mac(secret, body)):
        raise BadMediaLink()
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if claims["exp"] < (time.time() if now is None else now):
        raise BadMediaLink("the media link has expired")
    return Path(claims["path"])


def link(node_url: str, secret: str, path: Path, expires_at: float) -> MediaLink:
    return MediaLink(node_url + ROUTE, sign(secret, path, expires_at))


def _mac(secret: str, body: str) -> bytes:
    return hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class RemoteFile(io.RawIOBase):
    """A file on the API node, read through HTTP range requests (seekable, read-only).

    Reads are served from one buffered block: a read outside it fetches the `BLOCK_BYTES`
    that start at the read's position (or the read's size, if larger). The file's size comes
    with the first answer (its Content-Range), fetched when the file is opened, so a bad or
    expired link fails before PyAV sees the file."""

    def __init__(self, media: MediaLink, client: httpx.Client | None = None) -> None:
        super().__init__()
        self._link = media
        self._client = client or httpx.Client(timeout=_TIMEOUT)
        self._own_client = client is None
        self._pos = 0
        self._block_start = 0
        self._block = b""
        self.requests = 0  # range requests made (for tests and measurements)
        self.size = 0
        self._fetch(0, BLOCK_BYTES)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Up to `len(buffer)` bytes from the position: fewer at the block's end (a short
        read, as from a socket; only 0 means the end of the file)."""
        wanted = min(len(buffer), self.size - self._pos)
        if wanted <= 0:
            return 0
        if not self._block_start <= self._pos < self._block_start + len(self._block):
            self._fetch(self._pos, max(BLOCK_BYTES, wanted))
        start = self._pos - self._block_start
        n = min(wanted, len(self._block) - start)
        buffer[:n] = self._block[start : start + n]
        self._pos += n
        return n

    def close(self) -> None:
        if self._own_client and not self.closed:
            self._client.close()
        super().close()

    def _fetch(self, start: int, length: int) -> None:
        headers = {
            "Authorization": f"Bearer {self._link.token}",
            "Range": f"bytes={start}-{start + length - 1}",
        }
        self.requests += 1
        try:
            reply = self._client.get(self._link.url, headers=headers)
        except httpx.TransportError as exc:
            raise MediaUnreachable(
                f"cannot reach the API node for the media ({type(exc).__name__}: {exc})"
            ) from None
        if reply.status_code != 206:
            raise MediaUnreachable(
                f"the API node answered {reply.status_code} for the media: {reply.text[:200]}"
            )
        total = reply.headers.get("content-range", "").rpartition("/")[2]
        if not total.isdigit():
            raise MediaUnreachable("the API node's answer has no Content-Range")
        self.size = int(total)
        self._block_start, self._block = start, reply.content


class RemoteMedia(Media):
    """A scan's media read from its API node; closing it closes the HTTP reader too."""

    def __init__(self, media: MediaLink) -> None:
        self._source = RemoteFile(media)
        try:
            super().__init__(self._source)
        except BaseException:
            self._source.close()
            raise

    def close(self) -> None:
        super().close()
        self._source.close()
