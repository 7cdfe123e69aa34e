"""Real radio for the stream tests, on loopback: Debian's Icecast, a source client that plays a
programme in real time (PyAV's FFmpeg `icecast://` protocol, MP3), an HLS live playlist that
grows as time passes, a web server of the station's pages (which embed a stream for yt-dlp to
find), and a callback receiver that records what songscan POSTs.

A programme is a list of `Piece`s (audio at `music.RATE`, a name for the ground truth); the
source client notes the wall-clock time each piece started to play.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import av
import numpy as np

from tests.api.music import RATE
from tests.servers import QuietHTTPServer, free_port

SOURCE_PASSWORD = "source-pw"
FRAME_S = 0.1  # the source client pushes audio in frames of this length, in real time


@dataclass(frozen=True)
class Piece:
    name: str  # "song1", "unknown", "silence": the ground truth's label
    samples: np.ndarray

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / RATE


def silence(seconds: float) -> Piece:
    return Piece("silence", np.zeros(int(seconds * RATE), dtype=np.float32))


def encoded(
    samples: np.ndarray, fmt: str = "mp3", codec: str = "libmp3lame", bit_rate: int = 64_000
) -> bytes:
    """`samples` (mono, `RATE`) encoded whole into one file of format `fmt`."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=RATE, layout="mono")
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


# -- Icecast ------------------------------------------------------------------------------------
_ICECAST_XML = """<icecast>
  <limits><clients>{clients}</clients><sources>50</sources><queue-size>1048576</queue-size>
    <client-timeout>30</client-timeout><header-timeout>15</header-timeout>
    <source-timeout>5</source-timeout><burst-size>16384</burst-size></limits>
  <authentication><source-password>{password}</source-password>
    <admin-user>admin</admin-user><admin-password>{password}</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>0</fileserve>
  <paths><basedir>/usr/share/icecast2</basedir><logdir>{logdir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot></paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>2</loglevel>
  </logging>
</icecast>
"""


class Icecast:
    """Debian's icecast2 on 127.0.0.1 with a free port, serving up to `clients` listeners.
    Icecast refuses to run as root: as root it runs as the package's `icecast2` user."""

    def __init__(self, clients: int = 500) -> None:
        self.clients = clients

    def __enter__(self) -> Icecast:
        binary = shutil.which("icecast2")
        if binary is None:
            raise RuntimeError("icecast2 is not installed: run scripts/install-system-deps")
        self.dir = Path(tempfile.mkdtemp(prefix="songscan-icecast-"))
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        config = self.dir / "icecast.xml"
        config.write_text(
            _ICECAST_XML.format(
                password=SOURCE_PASSWORD, port=self.port, logdir=self.dir, clients=self.clients
            )
        )
        os.chmod(config, 0o644)
        command = [binary, "-c", str(config)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "icecast2", "--", *command]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status-json.xsl", timeout=1)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "error.log").read_text(errors="replace")[-2000:]
                    self.__exit__()
                    raise RuntimeError(f"icecast2 did not start: {log}") from None
                time.sleep(0.1)

    def url(self, mount: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mount}"

    def listeners(self, mount: str) -> int:
        """How many clients listen to `mount` now (0 when it has no source)."""
        with urllib.request.urlopen(f"{self.url('')}status-json.xsl", timeout=10) as answer:
            sources = json.load(answer)["icestats"].get("source", [])
        for source in sources if isinstance(sources, list) else [sources]:
            if source.get("listenurl", "").endswith(f"/{mount}"):
                return int(source.get("listeners", 0))
        return 0

    def __exit__(self, *exc: object) -> None:
        # The whole process group: as root, `runuser` is the child and icecast2 its child.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def icecast_put(port: int, mount: str, content_type: str) -> socket.socket:
    """A source connection to Icecast's `mount` (HTTP PUT, as Icecast 2.4 takes it), ready for
    the stream's bytes."""
    sock = socket.create_connection(("127.0.0.1", port))
    auth = base64.b64encode(f"source:{SOURCE_PASSWORD}".encode()).decode()
    sock.sendall(
        f"PUT /{mount} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Type: {content_type}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    answer = sock.recv(1024).split(b"\r\n")[0]
    if b" 100 " not in answer and b" 200 " not in answer:
        sock.close()
        raise RuntimeError(f"Icecast refused the source: {answer[:200]!r}")
    return sock


class _SocketFile(io.RawIOBase):
    """A socket as the non-seekable file PyAV writes a stream to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sock.sendall(data)
        return len(data)


@dataclass(frozen=True)
class Codec:
    """How a source client encodes: FFmpeg's container and encoder, the stream's MIME type
    and the encoder's sample rate (PyAV resamples to it)."""

    fmt: str
    encoder: str
    content_type: str
    rate: int = RATE


MP3 = Codec("mp3", "libmp3lame", "audio/mpeg")
AAC = Codec("adts", "aac", "audio/aac")
OGG_OPUS = Codec("ogg", "libopus", "application/ogg", rate=48_000)


class SourceClient:
    """Plays a programme to a mount of `icecast` in real time, as MP3 unless `codec` says
    otherwise (a thread). `started[i]` is the wall-clock time piece i began to be sent;
    `play()` then `wait()`; `stop()` hangs up."""

    def __init__(
        self,
        icecast: Icecast,
        mount: str,
        programme: list[Piece],
        bit_rate: int = 64_000,
        codec: Codec = MP3,
    ) -> None:
        self.icecast = icecast
        self.mount = mount
        self.programme = programme
        self.bit_rate = bit_rate
        self.codec = codec
        self.started: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def play(self) -> SourceClient:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # the mount is up once the first frames reached Icecast
        return self

    def wait(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            codec = self.codec
            sock = icecast_put(self.icecast.port, self.mount, codec.content_type)
            out = av.open(_SocketFile(sock), mode="w", format=codec.fmt)
            stream = out.add_stream(codec.encoder, rate=codec.rate, layout="mono")
            stream.bit_rate = self.bit_rate
            frame_n = int(FRAME_S * RATE)
            t0 = time.time()
            sent = 0.0
            for piece in self.programme:
                self.started.append(t0 + sent)
                for lo in range(0, piece.samples.shape[0], frame_n):
                    if self._stop.is_set():
                        out.close()
                        sock.close()
                        return
                    block = np.ascontiguousarray(piece.samples[lo : lo + frame_n])[None, :]
                    frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
                    frame.sample_rate = RATE
                    for packet in stream.encode(frame):
                        out.mux(packet)
                    sent += block.shape[1] / RATE
                    ahead = t0 + sent - time.time()
                    if ahead > 0:
                        time.sleep(ahead)
            for packet in stream.encode(None):
                out.mux(packet)
            time.sleep(1.0)  # let the last audio reach the listeners before hanging up
            out.close()
            sock.close()
        except BaseException as exc:
            self.error = exc


def serve_gets(answer: Callable[[str], tuple[bytes, str] | None]) -> QuietHTTPServer:
    """A loopback HTTP server (in a thread) answering each GET with `answer(path)`: a body and
    its Content-Type, or None for a 404."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            found = answer(self.path.split("?")[0])
            if found is None:
                self.send_error(404)
                return
            body, kind = found
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


# -- HLS ----------------------------------------------------------------------------------------
class LiveHls:
    """An HLS live stream on loopback: the programme cut into `segment_s` segments, segment k
    listed once its end has "played" (`start + (k+1) * segment_s`), a sliding window of the
    last `window` segments. `started[i]` is when piece i plays, as for `SourceClient`."""

    def __init__(self, programme: list[Piece], segment_s: float = 4.0, window: int = 4) -> None:
        audio = np.concatenate([p.samples for p in programme])
        n = int(segment_s * RATE)
        self.segments = [
            encoded(audio[lo : lo + n], "mpegts", "aac") for lo in range(0, audio.shape[0], n)
        ]
        self.segment_s = segment_s
        self.window = window
        self.programme = programme
        self.started: list[float] = []
        self.t0 = 0.0

    def __enter__(self) -> LiveHls:
        self.httpd = serve_gets(self._answer)
        return self

    def _answer(self, path: str) -> tuple[bytes, str] | None:
        if path == "/live.m3u8":
            return self.playlist().encode(), "application/vnd.apple.mpegurl"
        if path.startswith("/seg") and path.endswith(".ts"):
            k = int(path[4:-3])
            return (self.segments[k], "video/mp2t") if k < self.available() else None
        return None

    def play(self) -> LiveHls:
        """Start the clock one segment ago: segment 0 has just played and is listed; each
        later one is listed once it has played."""
        self.t0 = time.time() - self.segment_s
        offset = 0.0
        for piece in self.programme:
            self.started.append(self.t0 + offset)
            offset += piece.seconds
        return self

    def available(self) -> int:
        if not self.t0:
            return 0
        return min(len(self.segments), int((time.time() - self.t0) / self.segment_s))

    def playlist(self) -> str:
        end = max(1, self.available())
        first = max(0, end - self.window)
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{int(self.segment_s)}",
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
        ]
        for k in range(first, end):
            lines += [f"#EXTINF:{self.segment_s:.3f},", f"seg{k}.ts"]
        if end == len(self.segments):
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/live.m3u8"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- a station's web pages ----------------------------------------------------------------------
def player_page(media_url: str, tag: str = "audio") -> str:
    """A station's page with an HTML5 player of `media_url`: `<audio src>`, or (`tag="video"`)
    a `<video>` with a `<source>` typed as HLS when the URL is a playlist."""
    if tag == "audio":
        player = f'<audio controls autoplay src="{media_url}"></audio>'
    else:
        kind = "application/x-mpegURL" if media_url.endswith(".m3u8") else "audio/mpeg"
        player = f'<video controls><source src="{media_url}" type="{kind}"></video>'
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Radio Loopback</title></head>"
        f"<body><h1>Radio Loopback, live</h1>{player}<p>Listen live.</p></body></html>"
    )


@dataclass
class PageServer:
    """Serves `pages` (a path to its HTML; changeable while it runs) on loopback and counts
    the requests each path got."""

    pages: dict[str, str] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    def __enter__(self) -> PageServer:
        self.httpd = serve_gets(self._answer)
        return self

    def _answer(self, path: str) -> tuple[bytes, str] | None:
        self.hits[path] = self.hits.get(path, 0) + 1
        page = self.pages.get(path)
        return None if page is None else (page.encode(), "text/html; charset=utf-8")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- the callback receiver ----------------------------------------------------------------------
@dataclass
class Received:
    at: float
    body: dict[str, Any]
    raw: bytes
    headers: dict[str, str]


@dataclass
class CallbackReceiver:
    """Records the JSON POSTed to it. Answers 500 to the first `fail_first` requests; with
    `hang`, never answers at all (holds every connection open). On `port` (0: a free one)."""

    fail_first: int = 0
    hang: bool = False
    port: int = 0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0

    def __enter__(self) -> CallbackReceiver:
        receiver = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    receiver.attempts += 1
                    failing = receiver.attempts <= receiver.fail_first
                if receiver.hang:
                    time.sleep(60)
                    return
                if failing:
                    self.send_error(500)
                    return
                with lock:
                    receiver.received.append(
                        Received(time.time(), json.loads(raw), raw, dict(self.headers.items()))
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = QuietHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def results(self) -> list[dict[str, Any]]:
        return [r.body["result"] for r in self.received if "result" in r.body]

    def notifications(self) -> list[dict[str, Any]]:
        return [r.body["notification"] for r in self.received if "notification" in r.body]

    def wait_for(self, predicate: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.2)
        return bool(predicate(self))

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
