"""How a worker reads a scan's media from its API node: signed links, the internal route over
a real socket (range requests), and PyAV decoding through `RemoteFile` exactly what it decodes
from the local file, fetching only the ranges it needs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from songscan.api.app import create_app
from songscan.distributed.media_link import (
    BLOCK_BYTES,
    ROUTE,
    BadMediaLink,
    MediaLink,
    MediaUnreachable,
    RemoteFile,
    RemoteMedia,
    link,
    sign,
    verify,
)
from songscan.media import Media
from tests.audio import synth_song, write_audio
from tests.servers import UvicornThread, free_port

SECRET = "s" * 40


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API node configured for Celery workers (the broker is never contacted here)."""
    data = tmp_path_factory.mktemp("node")
    backends = {
        "broker_url": f"redis://127.0.0.1:{free_port()}/0",
        "node_url": "http://127.0.0.1:1",  # unused: the tests build their links themselves
        "media_secret": SECRET,
    }
    with UvicornThread(create_app(data, {"backends": backends})) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # MP3: no index, so a seek reads its way through the file (the demanding case)
    return write_audio(tmp_path_factory.mktemp("media") / "show.mp3", synth_song(4, 200.0))


def test_a_token_names_its_file_until_it_expires_and_only_with_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    token = sign(SECRET, path, time.time() + 60)
    assert verify(SECRET, token) == path
    with pytest.raises(BadMediaLink, match="expired"):
        verify(SECRET, token, now=time.time() + 61)
    with pytest.raises(BadMediaLink):
        verify("x" * 40, token)
    body, _, mac = token.partition(".")
    forged = sign(SECRET, Path("/etc/passwd"), time.time() + 60).partition(".")[0]
    for bad in (f"{forged}.{mac}", body, f"{body}.", f"{body}.!!!", "", "."):
        with pytest.raises(BadMediaLink):
            verify(SECRET, bad)


def test_the_route_serves_ranges_of_the_signed_file_and_refuses_anything_else(
    node: str, song: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = node + ROUTE
    good = sign(SECRET, song, time.time() + 60)
    whole = song.read_bytes()
    with caplog.at_level(logging.INFO):
        reply = httpx.get(url, headers={"Authorization": f"Bearer {good}", "Range": "bytes=10-19"})
        assert reply.status_code == 206
        assert reply.content == whole[10:20]
        assert reply.headers["content-range"] == f"bytes 10-19/{len(whole)}"
        refused = [
            {},
            {"Authorization": "Bearer"},
            {"Authorization": f"Basic {good}"},
            {"Authorization": f"Bearer {sign('y' * 40, song, time.time() + 60)}"},
            {"Authorization": f"Bearer {sign(SECRET, song, time.time() - 1)}"},
            {"Authorization": f"Bearer {good[:-2]}"},
        ]
        for headers in refused:
            assert httpx.get(url, headers=headers).status_code == 403, headers
        # a path the client makes up cannot be signed; one this node signed that is gone: 404
        gone = sign(SECRET, song.with_name("gone.mp3"), time.time() + 60)
        assert httpx.get(url, headers={"Authorization": f"Bearer {gone}"}).status_code == 404
        assert httpx.get(f"{url}/../../etc/passwd").status_code in (403, 404)
    assert "refused a media request" in caplog.text
    assert good not in caplog.text and good.partition(".")[2] not in caplog.text


def test_a_remote_file_reads_the_bytes_of_the_file_a_block_at_a_time(node: str, song: Path) -> None:
    whole = song.read_bytes()
    media = link(node, SECRET, song, time.time() + 60)
    with RemoteFile(media) as remote:
        assert remote.size == len(whole) and remote.requests == 1
        assert remote.read(100) == whole[:100]
        remote.seek(-50, 2)
        assert remote.read() == whole[-50:]
        remote.seek(BLOCK_BYTES // 2)
        assert remote.read(BLOCK_BYTES) == whole[BLOCK_BYTES // 2 : BLOCK_BYTES // 2 + BLOCK_BYTES]
        assert remote.read(0) == b""
        remote.seek(len(whole) + 10)
        assert remote.read(10) == b""


def test_pyav_decodes_through_range_requests_what_it_decodes_from_the_file(
    node: str, song: Path
) -> None:
    media = link(node, SECRET, song, time.time() + 60)
    with Media(song) as local, RemoteMedia(media) as remote:
        assert remote.info() == local.info()  # its size from the node, its place kept
        for start, end in ((120.0, 150.0), (0.0, 20.0), (60.0, 72.0)):  # seeks back and on
            here = np.concatenate(list(local.decode(8000, start_s=start, end_s=end)))
            there = np.concatenate(list(remote.decode(8000, start_s=start, end_s=end)))
            assert np.array_equal(here, there)
        fetched = remote._source.requests
    assert fetched <= 3 * (song.stat().st_size // BLOCK_BYTES + 1)


def test_a_bad_link_fails_when_the_file_is_opened(node: str, song: Path) -> None:
    with pytest.raises(MediaUnreachable, match="403"):
        RemoteFile(MediaLink(node + ROUTE, sign("z" * 40, song, time.time() + 60)))
    with pytest.raises(MediaUnreachable, match="cannot reach"):
        RemoteFile(MediaLink(f"http://127.0.0.1:{free_port()}{ROUTE}", "t"))
