"""A `url=` parameter to a media file on disk: direct media or a page that embeds it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from songscan.errors import UrlFailed
from songscan.sources.download import download_within, open_url, save_response
from songscan.sources.netguard import NO_EXCEPTIONS, AllowList, Deadline, guarded_client
from songscan.sources.webpage import find_embedded_media

MEDIA_CONTENT_TYPES = frozenset(
    {"application/ogg", "application/octet-stream", "binary/octet-stream", "application/mp4"}
)


def sniff_media(head: bytes) -> bool:
    """True when the first bytes of a body are those of an audio or video container."""
    if head.startswith((b"ID3", b"fLaC", b"OggS", b"\x1a\x45\xdf\xa3", b"#!AMR", b"FLV")):
        return True  # MP3 with tag, FLAC, Ogg, EBML (Matroska/WebM), AMR, Flash video
    if head.startswith((b".snd", b"caff", b"MAC ", b"wvpk", b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")):
        return True  # AU, CAF, Monkey's Audio, WavPack, ASF/WMA
    if head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"AVI ", b"RF64"):
        return True
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return True
    if head[4:8] == b"ftyp":  # MP4 / M4A / MOV / 3GP
        return True
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return True  # MPEG audio frame sync or ADTS AAC, without a tag
    return len(head) > 188 and head[0] == 0x47 and head[188] == 0x47  # MPEG-TS


def is_media(content_type: str, head: bytes) -> bool:
    """Whether a body is media rather than a page: by its first bytes, else by a media
    Content-Type (audio/*, video/*, Ogg, octet-stream) on a body that is not HTML."""
    if sniff_media(head):
        return True
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<!--", b"<?xml")):
        return False
    return content_type.startswith(("audio/", "video/")) or content_type in MEDIA_CONTENT_TYPES


def fetch_media(
    url: str,
    dest_dir: str | os.PathLike[str],
    *,
    max_bytes: int,
    timeout_s: float,
    allow: AllowList = NO_EXCEPTIONS,
) -> Path:
    """The media at `url`, saved to a new file in `dest_dir`.

    A body that is media (by its leading bytes or its Content-Type) is saved as it
    streams; any other body is handed to yt-dlp as a web page, and the media it finds is
    downloaded with the same checks. `timeout_s` covers the whole fetch.
    Raises UrlFailed (including "… yields no media") or MediaTooLarge.
    """
    dest = Path(dest_dir)
    deadline = Deadline(timeout_s)
    with (
        guarded_client(allow, deadline) as client,
        open_url(client, url, allow=allow, deadline=deadline, max_redirects=5) as opened,
    ):
        if is_media(opened.content_type, opened.head):
            return save_response(opened, dest, max_bytes=max_bytes, deadline=deadline)
        if not opened.head:
            raise UrlFailed("the URL yields no media (empty body)")
        page_url = opened.url  # any other body: a page (or playlist) for yt-dlp to read
    embedded = find_embedded_media(page_url, allow=allow, deadline=deadline, max_bytes=max_bytes)
    return download_within(
        embedded.url,
        dest,
        max_bytes=max_bytes,
        deadline=deadline,
        allow=allow,
        headers=embedded.headers,
    )


@contextlib.contextmanager
def temporary_media(parent: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A private directory for one request's media files, removed with all it holds when
    the block exits, however it exits (success, error, cancellation)."""
    path = Path(tempfile.mkdtemp(prefix="songscan-media-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
