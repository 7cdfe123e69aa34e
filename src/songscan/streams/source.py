"""A live stream's audio: Icecast/Shoutcast or plain HTTP audio, HLS, `.m3u`/`.pls` playlists,
and web pages (and the `youtube:`, `youtube-ch:`, `twitch:` shortcuts, which name one) whose
media yt-dlp finds.

Every HTTP request goes through the guarded client of `sources.netguard` (the rules of `url=`:
public addresses only unless `[api] url_allow` names them, each redirect hop checked again,
the address connected to is the address checked). FFmpeg never opens a URL itself: it reads
the bytes this module fetches (`_Pipe`), so an HLS playlist cannot point FFmpeg at a private
address either. Decoding is PyAV's, resampled to mono float32 at the engine's rate.

A URL that answers an HTML page, and a shortcut's page, goes to yt-dlp as a library
(`sources.webpage`, every request of yt-dlp's through the same guards); the media URL it
chooses (audio-only if the page has it, else the smallest format with audio; plain HTTP or
HLS) is then read like any stream URL. It is found again on every connection, since a page's
media URLs expire; the stream keeps the URL it was given.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import av
import av.error
import httpx
import m3u8
import numpy as np

from songscan.errors import SongscanError, UrlFailed
from songscan.sources.download import OpenedResponse, open_url
from songscan.sources.fetch import sniff_media
from songscan.sources.netguard import AllowList, Deadline, guarded_client
from songscan.sources.webpage import find_embedded_media

HLS_TYPES = frozenset(
    {"application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl", "audio/x-mpegurl"}
)
PLS_TYPES = frozenset({"audio/x-scpls", "audio/scpls", "application/pls+xml"})
MAX_PLAYLIST_BYTES = 1024 * 1024
MAX_PLAYLIST_DEPTH = 3  # a playlist naming a playlist naming ...
MAX_DECODE_ERRORS = 50  # damaged packets in a row before the connection is given up
# FFmpeg keeps a timestamp index of the packets it demuxes, for seeking: 24 bytes an MP3 frame
# (~40 a second), up to its `indexmem` of 1 MiB per stream (some 20 minutes of audio), grown by
# reallocation. A live stream is never sought: at 200 streams the index alone grew the server's
# memory by ~11 MB a minute, and its abandoned copies fragmented the malloc arenas by as much
# again (BENCHMARKS.md, live streams). Keep it to a few entries.
INDEX_MEMORY_BYTES = 4096
# Live-edge HLS: the newest segments at start (players start a few back; one is enough here).
HLS_START_SEGMENTS = 1
# A live server sends each listener a little at a time (Icecast: what its source sent, often a
# tenth of a second of audio). A read that got less than this waits `READ_PAUSE_S` before the
# next one, so that it finds more: fewer, larger reads cut the per-read work of hundreds of
# listeners (bench/streams.py) and cost a fraction of a second of latency on 12-s windows.
SMALL_READ_BYTES = 8192
READ_PAUSE_S = 0.25
_FOREVER_S = 10 * 365 * 86_400.0  # a stream has no end: only per-read timeouts apply
PAGE_WITHIN_S = 30.0  # yt-dlp finds a page's media within this long (all its requests)
MAX_PAGE_BYTES = 32 * 1024 * 1024  # the cap on each body yt-dlp reads (a page, a player script)
PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml"})

# AudD's shortcuts (`twitch:<channel>`, `youtube:<video_id>`, `youtube-ch:<channel_id>`), and
# songscan's `youtube:@<handle>`: the page each names, by the form of what follows the colon.
_SHORTCUTS: dict[str, list[tuple[re.Pattern[str], str]]] = {
    "youtube": [
        (re.compile(r"[A-Za-z0-9_-]{11}"), "https://www.youtube.com/watch?v={}"),
        (re.compile(r"@[A-Za-z0-9._-]{3,30}"), "https://www.youtube.com/{}/live"),
    ],
    "youtube-ch": [
        (re.compile(r"UC[A-Za-z0-9_-]{22}"), "https://www.youtube.com/channel/{}/live"),
    ],
    "twitch": [(re.compile(r"[A-Za-z0-9_]{1,25}"), "https://www.twitch.tv/{}")],
}
_SHORTCUT_FORMS = {
    "youtube": "an 11-character video id or an @handle",
    "youtube-ch": "a channel id (UC followed by 22 characters)",
    "twitch": "a channel name (letters, digits, _)",
}


class StreamEnded(SongscanError):
    """The stream stopped sending (the server closed it, or it sent nothing for too long)."""

    code = 600
    default_message = "the stream ended"


class NotAStream(UrlFailed):
    default_message = "the URL yields no audio stream"


@dataclass(frozen=True)
class StreamOptions:
    allow: AllowList
    read_timeout_s: float
    sample_rate_hz: int


class _Pipe(io.RawIOBase):
    """The bytes of an iterator as a non-seekable file, for FFmpeg to read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buf))
        target[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def shortcut_page(url: str) -> str | None:
    """The web page a `youtube:`, `youtube-ch:` or `twitch:` shortcut names; None for any
    other URL. UrlFailed for a shortcut whose name has not the form its site gives names."""
    prefix, colon, name = url.partition(":")
    patterns = _SHORTCUTS.get(prefix.lower()) if colon else None
    if patterns is None:
        return None
    for pattern, page in patterns:
        if pattern.fullmatch(name):
            return page.format(name)
    form = _SHORTCUT_FORMS[prefix.lower()]
    raise UrlFailed(f"a {prefix.lower()}: shortcut takes {form}, not {name[:40]!r}")


def stream_target(url: str) -> str:
    """The URL the stream's first request goes to: a shortcut's page, else `url` itself (for
    `check_url` before anything is stored)."""
    return shortcut_page(url) or url


@contextlib.contextmanager
def open_stream(
    url: str, options: StreamOptions, stop: threading.Event, page_within_s: float = PAGE_WITHIN_S
) -> Iterator[Iterator[np.ndarray]]:
    """Connect to the stream at `url` (a stream, a playlist, a page or a shortcut); yields an
    iterator of mono float32 blocks that ends with StreamEnded when the stream stops, or when
    `stop` is set. UrlFailed / NotAStream when the URL is not allowed, unreachable, or yields
    no audio; a page's media is looked for within `page_within_s`."""
    client = guarded_client(options.allow, Deadline(_FOREVER_S))
    client.timeout = httpx.Timeout(options.read_timeout_s)
    page = shortcut_page(url)
    with (
        client,
        (
            _page_bytes(client, page, options, stop, 0, page_within_s)
            if page
            else _bytes_of(client, url, options, stop, 0, page_within_s)
        ) as (chunks, fmt),
        decoding(chunks, options.sample_rate_hz, fmt) as blocks,
    ):
        yield blocks


@contextlib.contextmanager
def decoding(
    chunks: Iterator[bytes], rate: int, fmt: str | None = None
) -> Iterator[Iterator[np.ndarray]]:
    """The audio of a byte stream (its first audio track) as mono float32 blocks at `rate`;
    the blocks end with StreamEnded. NotAStream when FFmpeg finds no audio in it."""
    try:
        container = av.open(
            _Pipe(chunks),
            mode="r",
            format=fmt,
            container_options={"indexmem": str(INDEX_MEMORY_BYTES)},
            metadata_errors="ignore",
        )
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise NotAStream(f"the URL yields no audio FFmpeg can read ({exc})") from None
    except httpx.HTTPError:
        raise StreamEnded("the stream stopped before its audio could be read") from None
    with container:
        if not container.streams.audio:
            raise NotAStream("the URL's stream has no audio")
        yield _decoded(container, rate)


def _decoded(container: av.container.InputContainer, rate: int) -> Iterator[np.ndarray]:
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    errors = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
            frames = packet.decode()
        except StopIteration:
            break
        except av.error.FFmpegError:
            errors += 1
            if errors > MAX_DECODE_ERRORS:
                raise StreamEnded("the stream's audio is damaged beyond decoding") from None
            continue
        except httpx.HTTPError:
            raise StreamEnded("the stream stopped sending") from None
        errors = 0
        for frame in frames:
            frame.pts = None  # positions are counted in samples, not taken from the stream
            for out in resampler.resample(frame):
                # The frame's own memory (packed mono float32), not a copy: the listener copies
                # each block into its window buffer (`windows.WindowBuffer`).
                yield np.frombuffer(memoryview(out.planes[0]), np.float32, out.samples)
    raise StreamEnded("the stream ended")


_Found = tuple[Iterator[bytes], str | None]  # a stream's bytes, and their FFmpeg format


@contextlib.contextmanager
def _bytes_of(
    client: httpx.Client,
    url: str,
    options: StreamOptions,
    stop: threading.Event,
    depth: int,
    page_within_s: float | None,
) -> Iterator[_Found]:
    """The stream's bytes and the FFmpeg format to read them with (None: FFmpeg probes).
    A web page's media is found within `page_within_s`; None: this URL is a page's media,
    and a page again is no stream."""
    with _opened(client, url, options) as opened:
        kind = _kind(opened)
        if kind == "media":
            yield _until_stopped(_chain(opened.head, opened.rest), stop), None
            return
        text = "" if kind == "page" else _read_text(opened)
    if kind == "page":
        if page_within_s is None:
            raise NotAStream("the media the web page names is a web page, not an audio stream")
        with _page_bytes(client, opened.url, options, stop, depth, page_within_s) as found:
            yield found
        return
    if kind == "hls":
        yield _hls_bytes(client, opened.url, text, options, stop), None
        return
    if depth >= MAX_PLAYLIST_DEPTH:
        raise NotAStream("the playlist names playlists too deep")
    entry = _first_entry(text, kind)
    if entry is None:
        raise NotAStream("the URL is neither an audio stream nor a playlist of one")
    target = str(httpx.URL(opened.url).join(entry))
    with _bytes_of(client, target, options, stop, depth + 1, page_within_s) as found:
        yield found


@contextlib.contextmanager
def _page_bytes(
    client: httpx.Client,
    page_url: str,
    options: StreamOptions,
    stop: threading.Event,
    depth: int,
    within_s: float,
) -> Iterator[_Found]:
    """The bytes of the media yt-dlp finds in the page at `page_url` (UrlFailed when it finds
    none), fetched with the request headers its format asks for."""
    media = find_embedded_media(
        page_url,
        allow=options.allow,
        deadline=Deadline(within_s),
        max_bytes=MAX_PAGE_BYTES,
        live=True,
    )
    # This client fetches only the media from now on (and its playlist's segments).
    client.headers.update(
        {k: v for k, v in media.headers.items() if k.lower() != "accept-encoding"}
    )
    with _bytes_of(client, media.url, options, stop, depth + 1, None) as found:
        yield found


@contextlib.contextmanager
def _opened(client: httpx.Client, url: str, options: StreamOptions) -> Iterator[OpenedResponse]:
    deadline = Deadline(_FOREVER_S)
    with open_url(client, url, allow=options.allow, deadline=deadline, max_redirects=5) as got:
        yield got


def _kind(opened: OpenedResponse) -> str:
    """media | hls | pls | m3u | page (HTML, for yt-dlp), by the body's first bytes and its
    Content-Type."""
    head = opened.head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if sniff_media(opened.head):
        return "media"
    if head.startswith(b"#EXTM3U") or opened.content_type in HLS_TYPES:
        return "hls" if b"#EXT-X-" in _peek(opened) else "m3u"
    if head.lower().startswith(b"[playlist]") or opened.content_type in PLS_TYPES:
        return "pls"
    if opened.content_type.startswith("audio/") or opened.content_type in (
        "application/ogg",
        "application/octet-stream",
    ):
        return "media"
    if head.lower().startswith((b"http://", b"https://")):
        return "m3u"
    if opened.content_type in PAGE_TYPES or head.startswith(b"<"):
        return "page"
    return "m3u"  # any other text: a playlist of URLs, one a line (comments skipped)


def _peek(opened: OpenedResponse) -> bytes:
    """The head, grown to the whole (small) playlist so that its tags can be seen."""
    opened.head = _read_text(opened).encode()
    opened.rest = iter(())
    return opened.head


def _read_text(opened: OpenedResponse) -> str:
    data = opened.head
    for chunk in opened.rest:
        data += chunk
        if len(data) > MAX_PLAYLIST_BYTES:
            raise NotAStream("the URL's text is too long for a playlist")
    opened.head, opened.rest = data, iter(())
    if b"<html" in data[:2048].lower() or b"<!doctype" in data[:2048].lower():
        raise NotAStream("the URL is a web page, not an audio stream")
    return data.decode("utf-8", errors="replace")


def _first_entry(text: str, kind: str) -> str | None:
    for raw in text.splitlines():
        line = raw.strip()
        if kind == "pls":
            name, _, value = line.partition("=")
            if name.lower().startswith("file") and value.strip():
                return value.strip()
        elif line and not line.startswith("#"):
            return line
    return None


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def _until_stopped(chunks: Iterator[bytes], stop: threading.Event) -> Iterator[bytes]:
    for chunk in chunks:
        if stop.is_set():
            return
        yield chunk
        if len(chunk) < SMALL_READ_BYTES and stop.wait(READ_PAUSE_S):
            return


# -- HLS -------------------------------------------------------------------------------------


def _hls_bytes(
    client: httpx.Client, url: str, text: str, options: StreamOptions, stop: threading.Event
) -> Iterator[bytes]:
    """The segments of an HLS stream, in order, as one byte stream (MPEG-TS and packed audio
    concatenate; fragmented MP4 after its EXT-X-MAP init segment). A live playlist is read
    again every half target duration; its newest segment is the first one played."""
    playlist = m3u8.loads(text, uri=url)
    if playlist.is_variant:
        variant = min(playlist.playlists, key=lambda p: p.stream_info.bandwidth or 0)
        url = variant.absolute_uri
        playlist = m3u8.loads(_fetch_text(client, url, options), uri=url)
    next_seq: int | None = None
    init_sent: str | None = None
    while not stop.is_set():
        first_seq = playlist.media_sequence or 0
        segments = list(enumerate(playlist.segments, start=first_seq))
        if next_seq is None:
            start = (
                len(segments) if playlist.is_endlist else max(0, len(segments) - HLS_START_SEGMENTS)
            )
            next_seq = first_seq + (0 if playlist.is_endlist else start)
        for seq, segment in segments:
            if seq < next_seq or stop.is_set():
                continue
            init = segment.init_section.absolute_uri if segment.init_section else None
            if init and init != init_sent:
                yield _fetch_bytes(client, init, options)
                init_sent = init
            yield _fetch_bytes(client, segment.absolute_uri, options)
            next_seq = seq + 1
        if playlist.is_endlist:
            return
        stop.wait(max(0.5, (playlist.target_duration or 6) / 2))
        playlist = m3u8.loads(_fetch_text(client, url, options), uri=url)


def _fetch_text(client: httpx.Client, url: str, options: StreamOptions) -> str:
    with _opened(client, url, options) as opened:
        return _read_text(opened)


def _fetch_bytes(client: httpx.Client, url: str, options: StreamOptions) -> bytes:
    with _opened(client, url, options) as opened:
        data = opened.head
        for chunk in opened.rest:
            data += chunk
            if len(data) > 64 * MAX_PLAYLIST_BYTES:
                raise NotAStream("an HLS segment is over 64 MB")
        return data


def probe_stream(url: str, options: StreamOptions, within_s: float = 15.0) -> None:
    """Whether `url` delivers audio now: UrlFailed / NotAStream / StreamEnded when it does
    not, within `within_s` (addStream's check)."""
    stop = threading.Event()
    timer = threading.Timer(within_s, stop.set)
    timer.daemon = True
    timer.start()
    try:
        with open_stream(url, options, stop, page_within_s=within_s) as blocks:
            for block in blocks:
                if block.shape[0]:
                    return
    except StreamEnded:
        raise NotAStream("the URL's stream delivered no audio") from None
    finally:
        timer.cancel()
