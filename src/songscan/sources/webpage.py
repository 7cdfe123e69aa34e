"""Media embedded in a web page, found by yt-dlp used as a library.

yt-dlp only *finds* the media (`extract_info(download=False)`): HTML5 <audio>/<video>/
<source> tags, Open Graph og:audio/og:video, Twitter cards and every player it has an
extractor for. The chosen format is then fetched by our own `download`, so the size cap,
time limit and address checks apply to it as to any URL. With `live=True` (a live stream's
page: `songscan.streams.source`) an HLS format may be chosen as well, which the stream
source then reads through the same guarded client.

SSRF coverage of yt-dlp's own requests: every request yt-dlp makes through
`YoutubeDL.urlopen` (all extractor page, API and manifest requests) goes to one request
handler, `GuardedHttpxRH`, which replaces yt-dlp's urllib/requests/curl_cffi/websocket
handlers. It sends with the guarded httpx client (`netguard.guarded_client`: address
check at connect time, deadline on every socket operation), follows redirects itself
with `check_url` on each hop, caps each body at the fetch's byte limit, and ignores
proxies. Not covered: code that bypasses `urlopen` — the deprecated
`YoutubeDL._opener` (used by one obsolete extractor, dtube; it raises here because the
urllib handler is absent) and yt-dlp's external downloaders / ffmpeg, which we never run
(`download=False`). Plugins are disabled, config files are never read (only yt-dlp's
CLI reads them), and the cache is off.
"""

from __future__ import annotations

import functools
import io
import tempfile
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import httpx
import yt_dlp
import yt_dlp.globals
from yt_dlp.networking.common import Request, RequestHandler, Response
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import YoutubeDLError

from songscan.errors import MediaTooLarge, SongscanError, UrlFailed
from songscan.sources.download import REDIRECT_STATUSES
from songscan.sources.netguard import AllowList, Deadline, check_url, guarded_client

# Plugins are arbitrary code found on sys.path and in user dirs: never load them here.
if not yt_dlp.globals.all_plugins_loaded.value:
    yt_dlp.globals.plugin_dirs.value = []

PAGE_MAX_REDIRECTS = 5
MAX_PLAYLIST_ENTRIES = 5
_PLAIN_HTTP = ("http", "https")


class _Refused(TransportError):
    """A songscan error carried through yt-dlp's networking layer."""

    def __init__(self, error: SongscanError) -> None:
        super().__init__(msg=error.message)
        self.error = error


class _CappedBody(io.RawIOBase):
    """A streamed httpx response body as a file, refusing more than `max_bytes`."""

    def __init__(
        self,
        response: httpx.Response,
        max_bytes: int,
        deadline: Deadline,
        refusals: list[SongscanError],
    ) -> None:
        self._response = response
        self._refusals = refusals
        self._chunks = response.iter_bytes()
        self._pending = b""
        self._count = 0
        self._max_bytes = max_bytes
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: typing.Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                chunk = next(self._chunks, None)
            except httpx.HTTPError as exc:
                if isinstance(exc, httpx.TimeoutException) or self._deadline.expired():
                    raise self._refuse(self._deadline.failure()) from exc
                raise TransportError(cause=exc) from exc
            if chunk is None:
                return 0
            self._count += len(chunk)
            if self._count > self._max_bytes:
                limit = self._max_bytes
                raise self._refuse(MediaTooLarge(f"a page is over the limit of {limit} bytes"))
            self._pending = chunk
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _refuse(self, error: SongscanError) -> _Refused:
        self._refusals.append(error)
        return _Refused(error)

    def close(self) -> None:
        self._response.close()
        super().close()


class GuardedHttpxRH(RequestHandler):
    """yt-dlp request handler that sends only to allowed addresses, within the deadline."""

    _SUPPORTED_URL_SCHEMES = _PLAIN_HTTP
    _SUPPORTED_PROXY_SCHEMES = None  # proxies are ignored, never used
    _SUPPORTED_FEATURES = None

    def __init__(
        self, *, allow: AllowList, deadline: Deadline, max_bytes: int, **kwargs: typing.Any
    ) -> None:
        super().__init__(**kwargs)
        self._allow = allow
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._client = guarded_client(allow, deadline)
        self._client.cookies = self.cookiejar  # the same jar, shared with yt-dlp
        self.refusals: list[SongscanError] = []

    def _check_extensions(self, extensions: dict[str, typing.Any]) -> None:
        super()._check_extensions(extensions)
        for name in ("cookiejar", "timeout", "legacy_ssl", "keep_header_casing"):
            extensions.pop(name, None)

    def close(self) -> None:
        self._client.close()

    def _send(self, request: Request) -> Response:
        try:
            return self._send_guarded(request)
        except SongscanError as error:
            self.refusals.append(error)
            raise _Refused(error) from error

    def _send_guarded(self, request: Request) -> Response:
        if self._deadline.expired():
            raise self._deadline.failure()
        method, url, body = request.method, request.url, _body_bytes(request.data)
        # httpx decodes the encodings it advertises itself; yt-dlp's list may differ.
        headers = {
            k: v for k, v in self._get_headers(request).items() if k.lower() != "accept-encoding"
        }
        for _ in range(PAGE_MAX_REDIRECTS + 1):
            url = check_url(url, self._allow).url
            try:
                sent = self._client.build_request(method, url, headers=headers, content=body)
                response = self._client.send(sent, stream=True)
            except httpx.TimeoutException as exc:
                raise self._deadline.failure() from exc
            except httpx.HTTPError as exc:
                raise TransportError(cause=exc) from exc
            location = response.headers.get("location")
            if response.status_code in REDIRECT_STATUSES and location:
                response.close()
                try:
                    target = response.url.join(location)
                except httpx.InvalidURL as exc:
                    raise UrlFailed("a page redirects to a malformed URL") from exc
                dropped = {"authorization"} if target.host != response.url.host else set()
                if response.status_code in (301, 302, 303) and method != "HEAD":
                    method, body = "GET", None
                    dropped |= {"content-type", "content-length"}
                headers = {k: v for k, v in headers.items() if k.lower() not in dropped}
                url = str(target)
                continue
            adapted = Response(
                fp=io.BufferedReader(
                    _CappedBody(response, self._max_bytes, self._deadline, self.refusals)
                ),
                url=url,
                headers=dict(response.headers.multi_items()),
                status=response.status_code,
                reason=response.reason_phrase,
            )
            if response.status_code >= 400:
                raise HTTPError(adapted)
            return adapted
        raise UrlFailed(f"a page redirects more than {PAGE_MAX_REDIRECTS} times")


def _body_bytes(data: typing.Any) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if hasattr(data, "read"):
        return bytes(data.read())
    return b"".join(data)


class _GuardedYoutubeDL(yt_dlp.YoutubeDL):
    """YoutubeDL whose only network path is `GuardedHttpxRH`."""

    def __init__(
        self,
        params: dict[str, typing.Any],
        *,
        allow: AllowList,
        deadline: Deadline,
        max_bytes: int,
    ) -> None:
        self._guard = functools.partial(
            GuardedHttpxRH, allow=allow, deadline=deadline, max_bytes=max_bytes
        )
        super().__init__(params)

    @functools.cached_property
    def _request_director(self) -> typing.Any:
        return self.build_request_director([self._guard])

    def refusals(self) -> list[SongscanError]:
        handlers = self._request_director.handlers.values()
        return [error for handler in handlers for error in getattr(handler, "refusals", [])]


class _Silent:
    """yt-dlp logger that keeps the last error for our own message."""

    def __init__(self) -> None:
        self.last_error = ""

    def debug(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        self.last_error = message


@dataclass(frozen=True)
class EmbeddedMedia:
    """The media URL a page yields, with the request headers its format asks for."""

    url: str
    headers: Mapping[str, str]


_LIVE_PROTOCOLS = (*_PLAIN_HTTP, "m3u8", "m3u8_native")


def _format_selector(max_bytes: int, live: bool) -> str:
    if live:
        # The best audio-only format, else the smallest that carries audio (video is fetched
        # with it, never decoded): plain HTTP(S) or HLS, which the stream source reads itself.
        fetchable = f"[protocol~='^({'|'.join(_LIVE_PROTOCOLS)})$']"
        return f"bestaudio{fetchable}/worst{fetchable}"
    plain = (
        f"[protocol^=http][protocol!*=dash][filesize<?{max_bytes}][filesize_approx<?{max_bytes}]"
    )
    return f"bestaudio{plain}/best{plain}/bestaudio[protocol^=http]/best[protocol^=http]"


def _chosen(info: Mapping[str, typing.Any]) -> Iterator[Mapping[str, typing.Any]]:
    if info.get("_type") in ("playlist", "multi_video"):
        for entry in info.get("entries") or ():
            if entry:
                yield from _chosen(entry)
    elif info.get("url"):
        yield info


def find_embedded_media(
    page_url: str, *, allow: AllowList, deadline: Deadline, max_bytes: int, live: bool = False
) -> EmbeddedMedia:
    """The media URL that yt-dlp finds in the page at `page_url`, or UrlFailed("… yields
    no media"). Every request yt-dlp makes is checked like any fetched URL, each body capped
    at `max_bytes`. `live`: for a stream, whose media may be an HLS playlist (its URL is
    returned) and has no size."""
    check_url(page_url, allow)
    logger = _Silent()
    with tempfile.TemporaryDirectory(prefix="songscan-ytdlp-") as scratch:
        params: dict[str, typing.Any] = {
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "logger": logger,
            "cachedir": False,
            "paths": {"home": scratch, "temp": scratch},
            "socket_timeout": max(deadline.remaining(), 0.001),
            "proxy": "",
            "format": _format_selector(max_bytes, live),
            "playlistend": MAX_PLAYLIST_ENTRIES,
            "check_formats": False,
            "simulate": True,
            "color": "never",
        }
        with _GuardedYoutubeDL(params, allow=allow, deadline=deadline, max_bytes=max_bytes) as ydl:
            try:
                info = ydl.extract_info(page_url, download=False)
            except YoutubeDLError as exc:
                _raise_refusal(ydl)
                if deadline.expired():
                    raise deadline.failure() from exc
                detail = logger.last_error.removeprefix("ERROR: ") or str(exc)
                raise UrlFailed(f"the URL yields no media ({detail})") from exc
            except Exception as exc:  # an extractor's own failure (its site changed): no media
                _raise_refusal(ydl)
                failure = type(exc).__name__
                raise UrlFailed(f"the URL yields no media (yt-dlp failed: {failure})") from exc
            # A refused side request (an internal thumbnail, say) is harmless once the
            # media is found: the refusal already kept it from being sent.
            protocols = _LIVE_PROTOCOLS if live else _PLAIN_HTTP
            for chosen in _chosen(info or {}):
                if str(chosen.get("protocol", "https")) in protocols:
                    cookie = ydl.cookiejar.get_cookie_header(chosen["url"])
                    headers = dict(chosen.get("http_headers") or {})
                    if cookie:
                        headers["Cookie"] = cookie
                    return EmbeddedMedia(str(chosen["url"]), headers)
            _raise_refusal(ydl)
    how = "HTTP(S) or HLS" if live else "plain HTTP(S)"
    raise UrlFailed(f"the URL yields no media that can be fetched over {how}")


def _raise_refusal(ydl: _GuardedYoutubeDL) -> None:
    """Report a size, time or address refusal in yt-dlp's requests as itself."""
    refusals = ydl.refusals()
    if refusals:
        raise refusals[0]
