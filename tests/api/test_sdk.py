"""AudD's official Python SDK (`audd`) against songscan, changing nothing but where its
requests go. As a user does it (docs/sdk.md): the SDK's two base URLs, `audd.client.API_BASE`
and `ENTERPRISE_BASE`, set to the server (its root and `/enterprise`, or two roots with `serve
--enterprise-port`), and nothing else. Also through an httpx transport that sends
`api.audd.io` and `enterprise.audd.io` to the test server on loopback and keeps their Host
headers (so `enterprise.*` on `/` is exercised)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import audd
import audd.custom_catalog
import httpx
import pytest
from audd.errors import (
    AudDAuthenticationError,
    AudDCustomCatalogAccessError,
    AudDInvalidAudioError,
    AudDInvalidRequestError,
    AudDQuotaError,
)

from songscan.accounts.service import Accounts
from tests.api.conftest import Api, build_catalog, long_recording
from tests.api.music import excerpt, music, write_wav
from tests.test_serve import free_port, start_server, stop_server


class ToTestServer(httpx.HTTPTransport):
    """Connects every request to the test server; the URL's host stays in the Host header."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base = httpx.URL(base_url)
        self.hosts: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.headers["host"])
        request.url = request.url.copy_with(scheme="http", host=self.base.host, port=self.base.port)
        return super().handle_request(request)


@pytest.fixture
def sdk(api: Api) -> Iterator[tuple[ToTestServer, httpx.Client]]:
    transport = ToTestServer(api.base_url)
    with httpx.Client(transport=transport, timeout=120) as client:
        yield transport, client


def test_sdk_custom_catalog_recognize_and_enterprise(
    api: Api, sdk: tuple[ToTestServer, httpx.Client], tmp_path: Path
) -> None:
    transport, http = sdk
    token = api.new_token("enterprise")
    own = music(777, 40)
    with audd.AudD(token, httpx_client=http, max_retries=1) as client:
        client.custom_catalog.add(42, write_wav(tmp_path / "own.wav", own))

        match = client.recognize(write_wav(tmp_path / "q.wav", excerpt(own, 10.4, 30.4)))
        assert match is not None
        assert match.audio_id == 42
        assert match.timecode == "00:10"

        shared = client.recognize(api.media.url("/clip.wav"))
        assert shared is not None and shared.title == "Song 2"

        before = api.remaining(token)
        long = write_wav(tmp_path / "long.wav", long_recording(api.songs))
        songs = client.recognize_enterprise(long, skip=1, every=1, limit=2, accurate_offsets=True)
        # chunks 0 and 2 (skip one after each): chunk 0 is unknown music, chunk 2 is song 1
        assert [(s.title, s.timecode) for s in songs] == [("Song 1", "00:18")]
        assert songs[0].start_offset is not None and songs[0].end_offset is not None
        assert songs[0].start_seconds is not None and 24 <= songs[0].start_seconds < 36
        assert songs[0].isrc == "USLB00000001"
        assert api.remaining(token) == before - 2

        everything = client.recognize_enterprise(long)
        assert [s.audio_id for s in everything] == [1, 1, 1, 3, 3]
    assert "enterprise.audd.io" in transport.hosts and "api.audd.io" in transport.hosts
    assert api.leftover_media() == []


def test_sdk_error_classes(
    api: Api, sdk: tuple[ToTestServer, httpx.Client], tmp_path: Path
) -> None:
    _, http = sdk
    clip = write_wav(tmp_path / "clip.wav", excerpt(api.songs[2], 0, 10))

    with (
        audd.AudD("0" * 40, httpx_client=http, max_retries=1) as client,
        pytest.raises(AudDAuthenticationError) as unknown,
    ):
        client.recognize(clip)
    assert unknown.value.error_code == 900

    trial = api.new_token("trial")
    with audd.AudD(trial, httpx_client=http, max_retries=1) as client:
        with pytest.raises(AudDCustomCatalogAccessError) as denied:
            client.custom_catalog.add(1, clip)
        assert denied.value.error_code == 904

        with pytest.raises(AudDInvalidRequestError) as invalid:
            client.recognize_enterprise(clip, every=0)
        assert invalid.value.error_code == 50

        account = api.accounts.authenticate(trial, "127.0.0.1")
        left = api.accounts.remaining(account)
        api.accounts.settle(api.accounts.reserve(account, left, "test"), left, "ok", 0)
        with pytest.raises(AudDQuotaError) as quota:
            client.recognize(clip)
        assert quota.value.error_code == 902


def _recognise_with_the_sdk(token: str, tmp_path: Path, songs: dict[int, Any]) -> None:
    """A standard and an enterprise request, the SDK as installed (its own httpx client)."""
    with audd.AudD(token, max_retries=1) as client:
        match = client.recognize(write_wav(tmp_path / "q.wav", excerpt(songs[2], 17.4, 37.4)))
        assert match is not None and match.title == "Song 2"
        long = write_wav(tmp_path / "long.wav", long_recording(songs))
        everything = client.recognize_enterprise(long)
        assert [s.audio_id for s in everything] == [1, 1, 1, 3, 3]


def test_sdk_with_only_its_two_base_urls_changed(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/sdk.md, as written: `API_BASE` is the server's root, `ENTERPRISE_BASE` its
    `/enterprise` (the SDK posts to `{ENTERPRISE_BASE}/`)."""
    monkeypatch.setattr(audd.client, "API_BASE", api.base_url)
    monkeypatch.setattr(audd.client, "ENTERPRISE_BASE", f"{api.base_url}/enterprise")
    _recognise_with_the_sdk(api.new_token("enterprise"), tmp_path, api.songs)


def test_sdk_with_both_base_urls_at_a_root_of_serve_with_an_enterprise_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`songscan serve --enterprise-port P`: `/` on port P is the enterprise method, so both
    base URLs can be a host's root; the custom catalog's URL follows the standard base."""
    data, files = tmp_path / "data", tmp_path / "files"
    data.mkdir()
    files.mkdir()
    songs = build_catalog(data, files)
    (data / "songscan.toml").write_text("[plans.enterprise]\nrate_limit_per_s = 1000\n")
    accounts = Accounts.open(data, {"plans": {"enterprise": {"rate_limit_per_s": 1000}}})
    token = accounts.identity.create_account(plan="enterprise").token
    accounts.close()
    enterprise_port = free_port()
    proc, port = start_server(data, "--workers", "1", "--enterprise-port", str(enterprise_port))
    try:
        monkeypatch.setattr(audd.client, "API_BASE", f"http://127.0.0.1:{port}")
        monkeypatch.setattr(audd.client, "ENTERPRISE_BASE", f"http://127.0.0.1:{enterprise_port}")
        _recognise_with_the_sdk(token, tmp_path, songs)
        monkeypatch.setattr(audd.custom_catalog, "UPLOAD_URL", f"http://127.0.0.1:{port}/upload/")
        own = music(777, 40)
        with audd.AudD(token, max_retries=1) as client:
            client.custom_catalog.add(42, write_wav(tmp_path / "own.wav", own))
            match = client.recognize(write_wav(tmp_path / "q2.wav", excerpt(own, 10.4, 30.4)))
        assert match is not None and match.audio_id == 42
        # the standard port's root is still the standard method
        with (
            pytest.raises(AudDInvalidAudioError) as too_long,
            audd.AudD(token, max_retries=1) as client,
        ):
            client.recognize(write_wav(tmp_path / "l.wav", long_recording(songs)))
        assert too_long.value.error_code == 400
    finally:
        stop_server(proc)
