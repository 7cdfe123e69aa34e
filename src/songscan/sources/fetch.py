"""A `url=` parameter to a media file on disk: direct media or a page that embeds it."""

from __future__ import annotations

import contextlib
import fcntl
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


# The only directories `remove_orphan_media` touches. Not the `songscan-media-` of versions
# that did not lock theirs: a live server of such a version may share the temp dir.
MEDIA_DIR_PREFIX = "songscan-request-"


@contextlib.contextmanager
def temporary_media(parent: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A private directory for one request's media files, removed with all it holds when
    the block exits, however it exits (success, error, cancellation).

    The process holds an exclusive `flock` on the directory while the block runs; the kernel
    drops it when the process dies, however it dies, so `remove_orphan_media` can tell a
    killed server's directories from a live sibling's."""
    path, lock_fd = _locked_media_dir(parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock_fd)  # after the removal: a sweep never sees the directory unlocked


def _locked_media_dir(parent: str | os.PathLike[str] | None) -> tuple[Path, int]:
    while True:
        path = Path(tempfile.mkdtemp(prefix=MEDIA_DIR_PREFIX, dir=parent))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # a sweep removed it before it was locked: make another
        # Waits only while a sweep that found the new directory not yet locked removes it.
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return path, fd
        os.close(fd)  # it was removed under us: make another


def remove_orphan_media(parent: str | os.PathLike[str] | None = None) -> int:
    """Remove the request media directories in `parent` (default: the system's temp dir)
    that no live process holds: those of a server that was killed. Only `songscan-request-*`
    directories are looked at; live siblings sharing `parent` keep theirs. Returns how many
    were removed."""
    root = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed = 0
    for path in root.glob(f"{MEDIA_DIR_PREFIX}*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, a symlink, or not a directory: not ours to remove
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live request's
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    return removed
