"""songscan.sources against real HTTP servers on loopback (no mocks, no outside network).

Two servers run per test process: `allowed` (its exact 127.0.0.1:port is on the
allow-list the tests pass) and `denied` (same address, another port, not on it), so a
test can show that a hop to a non-public address is refused *before* connecting: the
denied server's hit log stays empty.
"""

from __future__ import annotations

import io
import re
import ssl
import subprocess
import sys
import threading
import wave
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from songscan.errors import InvalidParameters, MediaTooLarge, UrlFailed
from songscan.sources import (
    MEDIA_DIR_PREFIX,
    AllowList,
    check_url,
    download,
    fetch_media,
    is_media,
    is_public_address,
    parse_timecode,
    remove_orphan_media,
    sniff_media,
    temporary_media,
    timecode_from_url,
)
from songscan.sources.netguard import Deadline, guarded_client
from songscan.sources.webpage import find_embedded_media
from tests.servers import QuietHTTPServer

LIMIT = 1_000_000
SHORT = 10.0  # generous; only the stall tests rely on a limit being hit


def make_wav(seconds: float = 0.05, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x01\x00" * int(seconds * rate))
    return buffer.getvalue()


WAV = make_wav()
BIG_WAV = make_wav(seconds=1.0)  # 16 kB: "too large" for a 4 kB limit
SMALL_LIMIT = 4000


@dataclass
class Server:
    base: str
    port: int
    hits: Counter[str] = field(default_factory=Counter)
    release: threading.Event = field(default_factory=threading.Event)
    other: str = ""  # the other server's base URL, for pages that point there


def _pages(server: Server) -> dict[str, tuple[str, str]]:
    other = server.other
    return {
        "/audio.html": ("text/html", '<html><body><audio src="song.wav"></audio></body></html>'),
        "/video.html": (
            "text/html; charset=utf-8",
            '<!doctype html><video controls><source src="/song.wav" type="audio/wav"></video>',
        ),
        "/og.html": (
            "text/html",
            "<html><head><title>A song</title>"
            f'<meta property="og:audio" content="{server.base}/song.wav">'
            '<meta property="og:title" content="A song"></head><body>hello</body></html>',
        ),
        "/nomedia.html": ("text/html", "<html><body><p>just words</p></body></html>"),
        "/elsewhere.html": (
            "text/html",
            f'<html><body><audio src="{other}/song.wav"></audio></body></html>',
        ),
        "/refresh.html": (
            "text/html",
            '<html><head><meta http-equiv="refresh" '
            f'content="0;url={other}/audio.html"></head><body></body></html>',
        ),
        "/stall.html": ("text/html", '<html><body><audio src="/stall-body"></audio></body></html>'),
        "/og-relative.html": (
            "text/html",
            '<html><head><meta property="og:audio" content="/song.wav"></head></html>',
        ),
        "/huge.html": ("text/html", "<html><body>" + "x" * (4 * SMALL_LIMIT) + "</body></html>"),
        "/live.html": ("text/html", _hls_player("/master.m3u8")),
        "/live-audio.html": ("text/html", _hls_player("/master-audio.m3u8")),
        "/master.m3u8": (
            HLS,
            "#EXTM3U\n"
            '#EXT-X-STREAM-INF:BANDWIDTH=2560000,CODECS="avc1.64001f,mp4a.40.2"\nhigh.m3u8\n'
            '#EXT-X-STREAM-INF:BANDWIDTH=640000,CODECS="avc1.42e00a,mp4a.40.2"\nlow.m3u8\n'
            '#EXT-X-STREAM-INF:BANDWIDTH=300000,CODECS="avc1.42e00a"\nvideo-only.m3u8\n',
        ),
        "/master-audio.m3u8": (
            HLS,
            "#EXTM3U\n"
            '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="Main",DEFAULT=YES,URI="audio.m3u8"\n'
            '#EXT-X-STREAM-INF:BANDWIDTH=640000,CODECS="avc1.42e00a,mp4a.40.2",AUDIO="aud"\n'
            "low.m3u8\n",
        ),
    }


HLS = "application/vnd.apple.mpegurl"


def _hls_player(playlist: str) -> str:
    return f'<html><body><video><source src="{playlist}" type="{HLS}"></video></body></html>'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _redirect(self, location: str) -> None:
        self._send(302, b"", "text/plain", Location=location)

    def do_GET(self) -> None:
        state = self.server_state
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        state.hits[path] += 1
        pages = _pages(state)
        if path in ("/song.wav", "/song"):
            self._send(200, WAV, "audio/wav")
        elif path == "/song-octet":
            self._send(200, WAV, "application/octet-stream")
        elif path == "/song-mislabelled":
            self._send(200, WAV, "text/plain")
        elif path in pages:
            content_type, text = pages[path]
            self._send(200, text.encode(), content_type)
        elif path.startswith("/hops/"):
            left = int(path.rsplit("/", 1)[1])
            self._redirect(f"/hops/{left - 1}" if left > 1 else "/song.wav")
        elif path == "/redirect":
            self._redirect(query["to"][0])
        elif path == "/big.wav":
            self._send(200, BIG_WAV, "audio/wav")
        elif path == "/big-chunked.wav":
            self._send_chunked(BIG_WAV)
        elif path == "/stall-headers":
            state.release.wait()
        elif path == "/stall-body":
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(WAV)))
            self.end_headers()
            self.wfile.write(WAV[:100])
            self.wfile.flush()
            state.release.wait()
            self.close_connection = True
        else:
            self._send(404, b"not here", "text/plain")

    def _send_chunked(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for start in range(0, len(body), 1000):
            chunk = body[start : start + 1000]
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    started = []
    for _ in range(2):
        httpd = QuietHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        port = httpd.server_address[1]
        state = Server(base=f"http://127.0.0.1:{port}", port=port)
        httpd.RequestHandlerClass = type("Handler", (_Handler,), {"server_state": state})
        threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        started.append((httpd, state))
    (_, allowed), (_, denied) = started
    allowed.other, denied.other = denied.base, allowed.base
    yield allowed, denied
    for httpd, state in started:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def allowed(servers: tuple[Server, Server]) -> Server:
    return servers[0]


@pytest.fixture
def denied(servers: tuple[Server, Server]) -> Server:
    return servers[1]


@pytest.fixture
def allow(allowed: Server) -> AllowList:
    return AllowList([f"127.0.0.1:{allowed.port}"])


def assert_empty(directory: Path) -> None:
    assert list(directory.iterdir()) == []


# --- timecodes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("90.5", 90.5),
        ("0", 0),
        ("1m30s", 90),
        ("1m", 60),
        ("2h", 7200),
        ("1h2m3s", 3723),
        ("1H2M3S", 3723),
        ("01:30", 90),
        ("1:02:03", 3723),
        (" 45 ", 45),
    ],
)
def test_parse_timecode(text: str, seconds: float) -> None:
    assert parse_timecode(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "-5", "abc", "1m30", "1:75", "1:60:00", "1.5.2", "1e3", "s", "nan", "1h 2m"]
)
def test_parse_timecode_rejects(text: str) -> None:
    with pytest.raises(InvalidParameters):
        parse_timecode(text)


@pytest.mark.parametrize(
    ("url", "seconds"),
    [
        ("https://example.com/watch?v=abc&t=1m30s", 90),
        ("https://example.com/v?time_continue=42", 42),
        ("https://example.com/v?start=7", 7),
        ("https://example.com/v?t=10&start=99", 10),
        ("https://example.com/v#t=01:30", 90),
        ("https://example.com/v?x=1#t=1h", 3600),
        ("https://example.com/v?x=1", None),
        ("https://example.com/v?t=", None),
    ],
)
def test_timecode_from_url(url: str, seconds: float | None) -> None:
    assert timecode_from_url(url) == seconds


def test_timecode_from_url_rejects_garbage() -> None:
    with pytest.raises(InvalidParameters):
        timecode_from_url("https://example.com/v?t=soon")


# --- addresses and URL checks (no connection is made by check_url) ---------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2001:db8::1",
        "2001::1",  # Teredo
    ],
)
def test_non_public_addresses(address: str) -> None:
    import ipaddress

    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses(address: str) -> None:
    import ipaddress

    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://0.0.0.0/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/",  # ... as hex
        "http://localhost/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://10.0.0.1/",
        "http://100.64.0.1/",
        "http://[fe80::1]/",
        "https://192.168.0.1:8443/x",
    ],
)
def test_check_url_refuses_non_public(url: str) -> None:
    with pytest.raises(UrlFailed, match="not allowed"):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "ht!tp://x",
        "http://",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "ftp://8.8.8.8/a.mp3",
        "",
        "   ",
        "//8.8.8.8/a.mp3",
        "http://user:pw@8.8.8.8/",
        "http://8.8.8.8@127.0.0.1/",
        "http://8.8.8.8\\@127.0.0.1/",
        "http://8.8.8.8/\nHost: x",
        "http://exa mple.com/",
        "http://0177.0.0.1/",
        "http://[::1/",
    ],
)
def test_check_url_refuses_malformed(url: str) -> None:
    with pytest.raises(UrlFailed):
        check_url(url)


def test_check_url_accepts_public_literal() -> None:
    parsed = check_url("https://8.8.8.8/song.mp3?t=3")
    assert (parsed.scheme, parsed.host, parsed.port) == ("https", "8.8.8.8", 443)
    assert [str(a) for a in parsed.addresses] == ["8.8.8.8"]


def test_allow_list_entries() -> None:
    allow = AllowList(["127.0.0.1:8080", "[::1]:9000", "10.0.0.0/8", "media.lan", "fd00::/8"])
    assert check_url("http://127.0.0.1:8080/a", allow).port == 8080
    assert check_url("http://2130706433:8080/a", allow).host == "2130706433"
    assert check_url("http://[::1]:9000/", allow).addresses
    assert check_url("http://10.9.8.7/", allow).addresses
    assert check_url("http://[fd12::1]/", allow).addresses
    for refused in ("http://127.0.0.1:8081/", "http://127.0.0.2:8080/", "http://[::1]/"):
        with pytest.raises(UrlFailed, match="not allowed"):
            check_url(refused, allow)


def test_allow_list_host_names() -> None:
    assert check_url("http://localhost:5000/", AllowList(["localhost"])).addresses
    assert check_url("http://LocalHost:5000/", AllowList(["localhost:5000"])).addresses
    with pytest.raises(UrlFailed, match="not allowed"):
        check_url("http://localhost:5001/", AllowList(["localhost:5000"]))


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5/a.mp3", "http://localhost:5000/", "http://[::1]:9000/x"]
)
def test_a_refusal_says_how_to_allow_the_host(url: str) -> None:
    with pytest.raises(UrlFailed) as refused:
        check_url(url)
    message = refused.value.message
    assert "[api] section of songscan.toml" in message and "restart the server" in message
    suggested = re.search(r'url_allow = \["([^"]+)"\]', message)
    assert suggested is not None, message
    assert check_url(url, AllowList([suggested.group(1)])).addresses  # the advice works


@pytest.mark.parametrize("entry", ["", "127.0.0.1:0", "127.0.0.1:http", "[::1", "bad entry!"])
def test_allow_list_rejects_bad_entries(entry: str) -> None:
    with pytest.raises(ValueError):
        AllowList([entry])


# --- sniffing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        WAV[:64],
        b"ID3\x04\x00" + bytes(59),
        b"fLaC" + bytes(60),
        b"OggS" + bytes(60),
        b"\x00\x00\x00\x20ftypM4A " + bytes(52),
        b"\x1a\x45\xdf\xa3" + bytes(60),
        b"\xff\xfb\x90\x00" + bytes(60),
    ],
)
def test_sniff_media(head: bytes) -> None:
    assert sniff_media(head)


def test_is_media_by_type_but_not_html() -> None:
    assert is_media("audio/mpeg", b"\x00\x01odd")
    assert is_media("application/octet-stream", b"\x00\x01odd")
    assert not is_media("application/octet-stream", b"<!DOCTYPE html><html>")
    assert not is_media("text/html", b"<html>")
    assert not sniff_media(b"<html>")


# --- download --------------------------------------------------------------------------


def test_download(allowed: Server, allow: AllowList, tmp_path: Path) -> None:
    path = download(
        f"{allowed.base}/song.wav", tmp_path, max_bytes=LIMIT, timeout_s=SHORT, allow=allow
    )
    assert path.parent == tmp_path and path.read_bytes() == WAV
    assert path.suffix == ".wav"
    assert list(tmp_path.iterdir()) == [path]


def test_download_follows_redirect_chain(allowed: Server, allow: AllowList, tmp_path: Path) -> None:
    path = download(
        f"{allowed.base}/hops/3", tmp_path, max_bytes=LIMIT, timeout_s=SHORT, allow=allow
    )
    assert path.read_bytes() == WAV


def test_download_too_many_redirects(allowed: Server, allow: AllowList, tmp_path: Path) -> None:
    with pytest.raises(UrlFailed, match="redirects more than 2"):
        download(
            f"{allowed.base}/hops/3",
            tmp_path,
            max_bytes=LIMIT,
            timeout_s=SHORT,
            max_redirects=2,
            allow=allow,
        )
    assert_empty(tmp_path)


def test_download_404(allowed: Server, allow: AllowList, tmp_path: Path) -> None:
    with pytest.raises(UrlFailed, match="404"):
        download(f"{allowed.base}/nope", tmp_path, max_bytes=LIMIT, timeout_s=SHORT, allow=allow)
    assert_empty(tmp_path)


def test_download_refuses_loopback_without_allow_list(denied: Server, tmp_path: Path) -> None:
    with pytest.raises(UrlFailed, match="not allowed"):
        download(f"{denied.base}/direct-refused", tmp_path, max_bytes=LIMIT, timeout_s=SHORT)
    assert denied.hits["/direct-refused"] == 0
    assert_empty(tmp_path)


def test_download_refuses_redirect_to_other_port(
    allowed: Server, denied: Server, allow: AllowList, tmp_path: Path
) -> None:
    target = f"{denied.base}/redirected-refused"
    with pytest.raises(UrlFailed, match="not allowed"):
        download(
            f"{allowed.base}/redirect?to={target}",
            tmp_path,
            max_bytes=LIMIT,
            timeout_s=SHORT,
            allow=allow,
        )
    assert allowed.hits["/redirect"] >= 1
    assert denied.hits["/redirected-refused"] == 0
    assert_empty(tmp_path)


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "file:///etc/passwd",
        "gopher://x",
    ],
)
def test_download_refuses_redirect_to_disallowed(
    allowed: Server, allow: AllowList, tmp_path: Path, target: str
) -> None:
    with pytest.raises(UrlFailed):
        download(
            f"{allowed.base}/redirect?to={target}",
            tmp_path,
            max_bytes=LIMIT,
            timeout_s=SHORT,
            allow=allow,
        )
    assert_empty(tmp_path)


@pytest.mark.parametrize("path", ["/big.wav", "/big-chunked.wav"])
def test_download_too_large(allowed: Server, allow: AllowList, tmp_path: Path, path: str) -> None:
    with pytest.raises(MediaTooLarge):
        download(allowed.base + path, tmp_path, max_bytes=SMALL_LIMIT, timeout_s=SHORT, allow=allow)
    assert_empty(tmp_path)


@pytest.mark.parametrize("path", ["/stall-headers", "/stall-body"])
def test_download_time_limit(allowed: Server, allow: AllowList, tmp_path: Path, path: str) -> None:
    # The server never finishes (until teardown), so the limit is hit whatever its size.
    with pytest.raises(UrlFailed, match=r"within 0\.2 s"):
        download(allowed.base + path, tmp_path, max_bytes=LIMIT, timeout_s=0.2, allow=allow)
    assert_empty(tmp_path)


def test_guarded_client_refuses_at_connect_time(denied: Server) -> None:
    # Even when check_url is bypassed (as after a DNS answer changes), the connection
    # backend re-checks the address it is about to connect to.
    with (
        guarded_client(AllowList(), Deadline(SHORT)) as client,
        pytest.raises(UrlFailed, match="not allowed"),
    ):
        client.get(f"{denied.base}/bypass")
    assert denied.hits["/bypass"] == 0


def test_guarded_clients_share_one_tls_context_that_verifies() -> None:
    """Making a TLS context loads the CA bundle (~20 ms): a stream server makes a guarded client
    per callback, so they share one; it still checks certificates and host names."""
    contexts = set()
    for _ in range(3):
        with guarded_client(AllowList(), Deadline(SHORT)) as client:
            contexts.add(client._transport._pool._ssl_context)  # type: ignore[attr-defined]
    (context,) = contexts
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


# --- fetch_media -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/song.wav",
        "/song-octet",
        "/song-mislabelled",
        "/hops/2",
        "/audio.html",
        "/video.html",
        "/og.html",
        "/og-relative.html",
        "/redirect?to=/audio.html",
    ],
)
def test_fetch_media(allowed: Server, allow: AllowList, tmp_path: Path, path: str) -> None:
    media = fetch_media(
        allowed.base + path, tmp_path, max_bytes=LIMIT, timeout_s=SHORT, allow=allow
    )
    assert media.read_bytes() == WAV
    assert list(tmp_path.iterdir()) == [media]


def test_fetch_media_page_without_media(allowed: Server, allow: AllowList, tmp_path: Path) -> None:
    with pytest.raises(UrlFailed, match="yields no media"):
        fetch_media(
            f"{allowed.base}/nomedia.html", tmp_path, max_bytes=LIMIT, timeout_s=SHORT, allow=allow
        )
    assert_empty(tmp_path)


def test_fetch_media_404(allowed: Server, allow: AllowList, tmp_path: Path) -> None:
    with pytest.raises(UrlFailed, match="404"):
        fetch_media(f"{allowed.base}/gone", tmp_path, max_bytes=LIMIT, timeout_s=SHORT, allow=allow)
    assert_empty(tmp_path)


def test_fetch_media_refuses_embedded_media_elsewhere(
    allowed: Server, denied: Server, allow: AllowList, tmp_path: Path
) -> None:
    before = denied.hits["/song.wav"]
    with pytest.raises(UrlFailed, match="not allowed"):
        fetch_media(
            f"{allowed.base}/elsewhere.html",
            tmp_path,
            max_bytes=LIMIT,
            timeout_s=SHORT,
            allow=allow,
        )
    assert denied.hits["/song.wav"] == before
    assert_empty(tmp_path)


def test_fetch_media_refuses_ytdlp_request_elsewhere(
    allowed: Server, denied: Server, allow: AllowList, tmp_path: Path
) -> None:
    # yt-dlp follows the meta refresh itself; its request handler must refuse the hop.
    before = denied.hits["/audio.html"]
    with pytest.raises(UrlFailed, match="not allowed"):
        fetch_media(
            f"{allowed.base}/refresh.html", tmp_path, max_bytes=LIMIT, timeout_s=SHORT, allow=allow
        )
    assert denied.hits["/audio.html"] == before
    assert_empty(tmp_path)


def test_fetch_media_caps_pages_read_by_ytdlp(
    allowed: Server, allow: AllowList, tmp_path: Path
) -> None:
    with pytest.raises(MediaTooLarge):
        fetch_media(
            f"{allowed.base}/huge.html",
            tmp_path,
            max_bytes=SMALL_LIMIT,
            timeout_s=SHORT,
            allow=allow,
        )
    assert_empty(tmp_path)


@pytest.mark.parametrize("path", ["/big.wav", "/big-chunked.wav"])
def test_fetch_media_too_large(
    allowed: Server, allow: AllowList, tmp_path: Path, path: str
) -> None:
    with pytest.raises(MediaTooLarge):
        fetch_media(
            allowed.base + path, tmp_path, max_bytes=SMALL_LIMIT, timeout_s=SHORT, allow=allow
        )
    assert_empty(tmp_path)


def test_fetch_media_time_limit(allowed: Server, allow: AllowList, tmp_path: Path) -> None:
    with pytest.raises(UrlFailed, match="within"):
        fetch_media(
            f"{allowed.base}/stall-body", tmp_path, max_bytes=LIMIT, timeout_s=0.2, allow=allow
        )
    assert_empty(tmp_path)


def test_fetch_media_refuses_without_allow_list(allowed: Server, tmp_path: Path) -> None:
    before = allowed.hits["/audio.html"]
    with pytest.raises(UrlFailed, match="not allowed"):
        fetch_media(f"{allowed.base}/audio.html", tmp_path, max_bytes=LIMIT, timeout_s=SHORT)
    assert allowed.hits["/audio.html"] == before


# --- temporary_media -------------------------------------------------------------------


def test_temporary_media_removes_files_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), temporary_media(tmp_path) as directory:
        (directory / "partial.media").write_bytes(b"x")
        raise RuntimeError("client went away")
    assert_empty(tmp_path)


def test_temporary_media_with_fetch(allowed: Server, allow: AllowList, tmp_path: Path) -> None:
    with temporary_media(tmp_path) as directory:
        media = fetch_media(
            f"{allowed.base}/audio.html", directory, max_bytes=LIMIT, timeout_s=SHORT, allow=allow
        )
        assert media.exists()
    assert not media.exists()
    assert_empty(tmp_path)


def test_orphan_media_of_a_killed_process_is_removed_and_nothing_else(tmp_path: Path) -> None:
    """A shared temp dir: only `songscan-request-*` directories no live process holds go."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from songscan.sources import temporary_media\n"
            f"with temporary_media({str(tmp_path)!r}) as d:\n"
            "    (d / 'upload.wav').write_bytes(b'RIFF')\n"
            "    print(d, flush=True)\n"
            "    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    orphan = Path(holder.stdout.readline().strip())
    holder.kill()  # SIGKILL: its `finally` never runs
    holder.wait()
    assert (orphan / "upload.wav").exists()
    others = [tmp_path / "songscan-pg-x", tmp_path / "their-dir"]
    for other in others:
        other.mkdir()
    (tmp_path / f"{MEDIA_DIR_PREFIX}file").write_bytes(b"not a directory")
    (tmp_path / f"{MEDIA_DIR_PREFIX}link").symlink_to(others[1], target_is_directory=True)
    with temporary_media(tmp_path) as live:
        (live / "upload.wav").write_bytes(b"RIFF")
        assert remove_orphan_media(tmp_path) == 1
        assert not orphan.exists() and (live / "upload.wav").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{MEDIA_DIR_PREFIX}file", f"{MEDIA_DIR_PREFIX}link", "songscan-pg-x", "their-dir"]
    )


# --- yt-dlp's own requests -------------------------------------------------------------


def test_ytdlp_redirect_hop_is_checked(allowed: Server, denied: Server, allow: AllowList) -> None:
    before = denied.hits["/audio.html"]
    with pytest.raises(UrlFailed, match="not allowed"):
        find_embedded_media(
            f"{allowed.base}/redirect?to={denied.base}/audio.html",
            allow=allow,
            deadline=Deadline(SHORT),
            max_bytes=LIMIT,
        )
    assert denied.hits["/audio.html"] == before


def test_ytdlp_page_request_time_limit(allowed: Server, allow: AllowList) -> None:
    with pytest.raises(UrlFailed, match="within"):
        find_embedded_media(
            f"{allowed.base}/stall-headers", allow=allow, deadline=Deadline(0.2), max_bytes=LIMIT
        )


def test_ytdlp_finds_media_url(allowed: Server, allow: AllowList) -> None:
    found = find_embedded_media(
        f"{allowed.base}/audio.html", allow=allow, deadline=Deadline(SHORT), max_bytes=LIMIT
    )
    assert found.url == f"{allowed.base}/song.wav"


@pytest.mark.parametrize(
    ("page", "chosen"),
    [("/live.html", "/low.m3u8"), ("/live-audio.html", "/audio.m3u8")],
    ids=["smallest-with-audio", "audio-only"],
)
def test_ytdlp_live_format_is_audio_only_else_the_smallest_with_audio(
    allowed: Server, allow: AllowList, page: str, chosen: str
) -> None:
    """For a live stream (`live=True`) an HLS format may be chosen: the audio-only rendition
    if there is one, else the lowest-bandwidth variant that carries audio; a `url=` fetch
    (plain HTTP only) finds nothing it can download in the same page."""
    found = find_embedded_media(
        f"{allowed.base}{page}", allow=allow, deadline=Deadline(SHORT), max_bytes=LIMIT, live=True
    )
    assert found.url == f"{allowed.base}{chosen}"
    with pytest.raises(UrlFailed, match="yields no media"):
        find_embedded_media(
            f"{allowed.base}{page}", allow=allow, deadline=Deadline(SHORT), max_bytes=LIMIT
        )


def test_fetch_media_time_limit_on_embedded_media(
    allowed: Server, allow: AllowList, tmp_path: Path
) -> None:
    with pytest.raises(UrlFailed, match="within"):
        fetch_media(
            f"{allowed.base}/stall.html", tmp_path, max_bytes=LIMIT, timeout_s=0.5, allow=allow
        )
    assert_empty(tmp_path)
