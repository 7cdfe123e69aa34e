"""A SHOUTcast v1 server answers `ICY 200 OK` instead of an HTTP status line: the listener
reads it as HTTP/1.0 (as players do). Debian packages no SHOUTcast server, so a loopback
socket server speaks its handshake, byte for byte as SHOUTcast DNAS 1.9 does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from songscan.errors import UrlFailed
from songscan.sources import AllowList
from songscan.streams.source import StreamEnded, StreamOptions, open_stream
from tests.api.music import music
from tests.streams.radio import encoded

ENGINE_RATE = 8000
SECONDS = 6.0


class IcyServer:
    """Answers one request with `ICY 200 OK`, SHOUTcast's headers and `body`, sending the
    status line in pieces of `split` bytes first (a server's answer may arrive a few bytes
    at a time)."""

    def __init__(self, body: bytes, split: int) -> None:
        self.body, self.split = body, split
        self.requests: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self._sock.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            self.requests.append(request)
            head = (
                b"ICY 200 OK\r\nicy-notice1: <BR>This stream requires Winamp<BR>\r\n"
                b"icy-name: songscan test radio\r\nicy-genre: test\r\nicy-pub: 0\r\n"
                b"icy-br: 64\r\ncontent-type: audio/mpeg\r\n\r\n"
            )
            for i in range(0, 12, self.split):
                conn.sendall(head[i : i + self.split])
                time.sleep(0.05)
            conn.sendall(head[12:] + self.body)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def mp3() -> bytes:
    return encoded(music(3, SECONDS))


def _decoded_seconds(blocks: Iterator[np.ndarray]) -> float:
    n = 0
    try:
        for block in blocks:
            n += block.shape[0]
    except StreamEnded:
        pass
    return n / ENGINE_RATE


@pytest.mark.parametrize("split", [12, 1, 3])
def test_a_shoutcast_v1_answer_is_read_as_http_1_0(mp3: bytes, split: int) -> None:
    server = IcyServer(mp3, split)
    try:
        options = StreamOptions(AllowList([f"127.0.0.1:{server.port}"]), 5.0, ENGINE_RATE)
        url = f"http://127.0.0.1:{server.port}/;stream.mp3"
        with open_stream(url, options, threading.Event()) as blocks:
            seconds = _decoded_seconds(blocks)
    finally:
        server.close()
    assert server.requests[0].startswith(b"GET /;stream.mp3 ")
    assert abs(seconds - SECONDS) < 0.2, seconds  # the whole song, decoded


def test_an_answer_that_only_starts_like_icy_is_not_rewritten() -> None:
    """`IC…` that goes on otherwise is left as it is: an unparsable status line, refused."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"ICX 200 OK\r\ncontent-type: audio/mpeg\r\n\r\n" + b"\0" * 4096)

    threading.Thread(target=serve, daemon=True).start()
    options = StreamOptions(AllowList([f"127.0.0.1:{port}"]), 5.0, ENGINE_RATE)
    try:
        with (
            pytest.raises(UrlFailed, match="RemoteProtocolError"),
            open_stream(f"http://127.0.0.1:{port}/", options, threading.Event()) as blocks,
        ):
            _decoded_seconds(blocks)
    finally:
        sock.close()
