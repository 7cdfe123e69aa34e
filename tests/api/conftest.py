"""One real songscan server per test process: uvicorn on 127.0.0.1 with a free port, a small
synthetic catalog, accounts on every plan, and a media server on loopback for `url=` tests.

The server keeps request media under `Api.media_tmp`, so a test can show that nothing is left
behind after a request, good or bad.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from songscan.accounts.service import Accounts
from songscan.api.app import create_app
from songscan.catalog import Catalog, TrackMetadata
from songscan.config import DEFAULT
from songscan.ingest import IngestItem, ingest
from tests.api.music import excerpt, music, wav_bytes, write_wav
from tests.servers import QuietHTTPServer, UvicornThread

CATALOG_SEEDS = {1: 101, 2: 102, 3: 103}  # audio_id -> seed of its synthetic song
SONG_S = 60.0
MAX_BODY_MB = 12


def song_metadata(audio_id: int) -> TrackMetadata:
    return TrackMetadata(
        artist=f"Synth Artist {audio_id}",
        title=f"Song {audio_id}",
        album=f"Album {audio_id}",
        release_date=f"2020-01-0{audio_id}",
        label="Loopback Records",
        isrc=f"USLB0000000{audio_id}",
        upc=f"00000000000{audio_id}",
        song_link=f"https://example.com/song/{audio_id}",
    )


@dataclass
class MediaServer:
    """Serves fixed bodies on loopback; `routes` maps a path to (status, headers, body)."""

    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)

    def __enter__(self) -> MediaServer:
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                status, headers, body = routes.get(
                    self.path.split("?")[0], (404, {"Content-Type": "text/plain"}, b"not found")
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Api:
    base_url: str
    app: FastAPI
    accounts: Accounts
    data_dir: Path
    media_tmp: Path
    media: MediaServer
    files: Path
    songs: dict[int, np.ndarray]
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=120, **kwargs)

    def new_token(self, plan: str) -> str:
        return self.accounts.identity.create_account(plan=plan).token

    def account_id(self, token: str) -> int:
        return self.accounts.authenticate(token, "127.0.0.1").id

    def remaining(self, token: str) -> int:
        return self.accounts.remaining(self.accounts.authenticate(token, "127.0.0.1"))

    def leftover_media(self, wait_s: float = 0.0) -> list[Path]:
        """Files or dirs left in the server's media temp dir (polled up to `wait_s`, for a
        request the server is still winding down after its client left)."""
        deadline = time.monotonic() + wait_s
        while True:
            left = list(self.media_tmp.iterdir())
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)


def build_catalog(
    data_dir: Path, files: Path, database_url: str | None = None, index_url: str | None = None
) -> dict[int, np.ndarray]:
    songs = {audio_id: music(seed, SONG_S) for audio_id, seed in CATALOG_SEEDS.items()}
    catalog = Catalog(data_dir, database_url=database_url, index_url=index_url)
    items = [
        IngestItem(
            write_wav(files / f"song{audio_id}.wav", samples),
            metadata=song_metadata(audio_id),
            audio_id=audio_id,
        )
        for audio_id, samples in songs.items()
    ]
    outcomes = ingest(catalog, items, DEFAULT, workers=1)
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    catalog.close()
    return songs


def long_recording(songs: dict[int, np.ndarray]) -> np.ndarray:
    """72 s = six chunks: 12 s of music not in the catalog, song 1 from 6.4 s to 42.4 s, song 3
    from 0.4 s to 24.4 s. Chunks 1..3 match song 1 at 00:06, 00:18, 00:30; chunks 4..5 song 3
    at 00:00, 00:12 (0.4 s off whole seconds, so rounding cannot flip a timecode)."""
    return np.concatenate(
        [music(999, 12), excerpt(songs[1], 6.4, 42.4), excerpt(songs[3], 0.4, 24.4)]
    ).astype(np.float32)


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("api")
    data_dir, media_tmp, files = root / "data", root / "media-tmp", root / "files"
    for d in (data_dir, media_tmp, files):
        d.mkdir()
    songs = build_catalog(data_dir, files)
    clip = wav_bytes(excerpt(songs[2], 17.4, 37.4))
    with MediaServer() as media:
        media.routes.update(
            {
                "/clip.wav": (200, {"Content-Type": "audio/wav"}, clip),
                "/long.wav": (
                    200,
                    {"Content-Type": "audio/wav"},
                    wav_bytes(long_recording(songs)),
                ),
                "/page.html": (
                    200,
                    {"Content-Type": "text/html"},
                    b"<!doctype html><html><body><p>No media here.</p></body></html>",
                ),
                "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/"}, b""),
                "/to-private": (302, {"Location": "http://10.0.0.1/clip.wav"}, b""),
            }
        )
        fast = {"rate_limit_per_s": 1000}  # the tests are not about the rate limit
        config = {
            "accounts": {"free_requests": 300},
            "plans": {
                "trial": fast,
                "startup": fast,
                "enterprise": fast,
                "slow": {"rate_limit_per_s": 0.001},  # one request, then 429 for ~17 minutes
            },
            "api": {
                "max_body_mb": MAX_BODY_MB,
                "tmp_dir": str(media_tmp),
                "url_allow": [f"127.0.0.1:{media.port}"],
                "fetch_timeout_s": 30,
            },
        }
        app = create_app(data_dir, config)
        with UvicornThread(app) as server:
            api = Api(
                base_url=server.base_url,
                app=app,
                accounts=app.state.accounts,
                data_dir=data_dir,
                media_tmp=media_tmp,
                media=media,
                files=files,
                songs=songs,
            )
            for plan in ("trial", "startup", "enterprise"):
                api.tokens[plan] = api.new_token(plan)
            yield api


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["status"] == "error", body
    return body["error"]["error_code"], body["error"]["error_message"]
