"""One songscan server for the stream tests (uvicorn on loopback, the synthetic catalog of the
API tests, loopback allowed for `url=` and callbacks, short reconnect and gap timings), and one
Icecast server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from songscan.accounts.service import Accounts
from songscan.api.app import create_app
from songscan.streams.store import StreamStore, longpoll_category
from tests.api.conftest import MediaServer, build_catalog
from tests.api.music import music
from tests.servers import UvicornThread, start_postgres
from tests.streams.radio import Icecast, encoded

# Short timings, so that a drop, a retry and a reconnect happen within a test's minutes.
STREAMS_CONFIG = {
    "gap_tolerance_s": 4.0,
    "reconnect_min_s": 0.5,
    "reconnect_max_s": 2.0,
    "read_timeout_s": 4.0,
    "probe_s": 8.0,
    "silence_notify_s": 12.0,
    "callback_timeout_s": 2.0,
    "callback_attempts": 4,
    "callback_backoff_s": 0.5,
    "lease_s": 6.0,
}


@dataclass
class StreamsServer:
    base_url: str
    app: FastAPI
    accounts: Accounts
    media: MediaServer
    songs: dict[int, np.ndarray]
    tokens: list[str] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60)

    def new_token(self, plan: str = "enterprise") -> str:
        return self.accounts.identity.create_account(plan=plan).token

    def call(self, method: str, token: str | None, **params: object) -> dict[str, object]:
        data = {k: str(v) for k, v in params.items()}
        if token is not None:
            data["api_token"] = token
        with self.client() as client:
            body: dict[str, object] = client.post(f"/{method}/", data=data).json()
        return body


@pytest.fixture(scope="session")
def icecast() -> Iterator[Icecast]:
    with Icecast() as server:
        yield server


@contextmanager
def serve_streams(
    data_dir: Path,
    root: Path,
    songs: dict[int, np.ndarray],
    database_url: str | None = None,
) -> Iterator[StreamsServer]:
    """A songscan server over the catalog in `data_dir`, with a media server beside it."""
    with MediaServer() as media:
        media.routes.update(
            {
                "/quiet.mp3": (
                    200,
                    {"Content-Type": "audio/mpeg"},
                    encoded(music(4242, 20.0) * 0.001),
                ),
                "/page.html": (
                    200,
                    {"Content-Type": "text/html"},
                    b"<!doctype html><html><body><p>No stream here.</p></body></html>",
                ),
                "/to-private": (302, {"Location": "http://10.0.0.1/live.mp3"}, b""),
            }
        )
        fast = {"rate_limit_per_s": 1000}
        config: dict[str, Any] = {
            "accounts": {"test_token": True},
            "plans": {"trial": fast, "startup": fast, "enterprise": fast},
            "api": {"url_allow": ["127.0.0.1"], "tmp_dir": str(root)},
            "streams": STREAMS_CONFIG,
        }
        if database_url:
            config["accounts"]["database_url"] = database_url
        app = create_app(data_dir, config)
        with UvicornThread(app) as server:
            yield StreamsServer(server.base_url, app, app.state.accounts, media, songs)


@pytest.fixture(scope="session")
def streams_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamsServer]:
    root = tmp_path_factory.mktemp("streams")
    data_dir, files = root / "data", root / "files"
    data_dir.mkdir()
    files.mkdir()
    songs = build_catalog(data_dir, files)
    with serve_streams(data_dir, root, songs) as server:
        yield server


def quiet_url(server: StreamsServer) -> str:
    return server.media.url("/quiet.mp3")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Accounts, StreamStore]]:
    """An accounts database (SQLite; PostgreSQL on a server of its own) and its streams store."""
    if request.param == "sqlite":
        accounts = Accounts(f"sqlite:///{tmp_path / 'accounts.db'}", {})
        yield accounts, StreamStore(accounts.engine)
        accounts.close()
        return
    server = start_postgres()
    try:
        accounts = Accounts(server.create_database(), {})
        yield accounts, StreamStore(accounts.engine)
        accounts.close()
    finally:
        server.stop()


def add(accounts: Accounts, store: StreamStore, radio_id: int) -> int:
    """A stream of a new enterprise account; its id."""
    account = accounts.identity.create_account(plan="enterprise")
    stream = store.add(
        account.account.id,
        radio_id,
        "http://radio.example/live.mp3",
        callbacks_before=False,
        category=longpoll_category(account.token, radio_id),
        slots=10,
    )
    return stream.id
