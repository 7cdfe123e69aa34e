"""Bad input of every kind, over real sockets: the right AudD error, the server still up, and
no media left in the server's temp dir."""

from __future__ import annotations

import base64
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import urlsplit

import httpx
import pytest

from songscan.config import DEFAULT
from tests.api.conftest import MAX_BODY_MB, Api, error_of
from tests.api.music import excerpt, music, wav_bytes, zero_channel_wav


@pytest.fixture(autouse=True)
def server_stays_clean(api: Api) -> Iterator[None]:
    """After every test here: the server answers and has left no media behind."""
    yield
    with api.client() as client:
        assert client.get("/healthz").json()["status"] == "ok"
    assert api.leftover_media(wait_s=10) == []


def post_file(api: Api, name: str, content: bytes, path: str = "/", **data: str) -> httpx.Response:
    with api.client() as client:
        return client.post(
            path,
            data={"api_token": api.tokens["enterprise"], **data},
            files={"file": (name, content)},
        )


# -- media that is not (usable) audio -----------------------------------------------------------
def truncated_flac() -> bytes:
    import av

    buffer = __import__("io").BytesIO()
    with av.open(buffer, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=22050, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            (music(7, 5) * 32767).astype("int16").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 22050
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()[:300]


BAD_MEDIA = {
    "random bytes": ("noise.bin", bytes(range(256)) * 64, {500}),
    "empty file": ("empty.wav", b"", {500}),
    "truncated FLAC": ("cut.flac", truncated_flac(), {300, 500}),
    "zero channels": ("zero.wav", zero_channel_wav(), {500}),
    "text named .mp3": ("song.mp3", b"This is a text file, not an MP3.\n" * 200, {500}),
    "truncated WAV": ("cut.wav", wav_bytes(music(8, 5))[:400], {300, 500}),
}


@pytest.mark.parametrize("path", ["/", "/enterprise", "/upload/"])
@pytest.mark.parametrize("case", list(BAD_MEDIA))
def test_bad_media(api: Api, case: str, path: str) -> None:
    name, content, codes = BAD_MEDIA[case]
    token = api.new_token("enterprise")
    before = api.remaining(token)
    with api.client() as client:
        r = client.post(
            path, data={"api_token": token, "audio_id": "1"}, files={"file": (name, content)}
        )
    assert r.status_code == 200
    assert api.remaining(token) == before  # nothing billed for a failure
    if case.startswith("truncated") and path == "/enterprise" and r.json()["status"] == "success":
        # the header promises seconds the file does not hold: no chunk has audio to recognise
        assert r.json()["result"] == []
        return
    code, message = error_of(r)
    assert code in codes, (code, message)
    assert "Traceback" not in r.text


def test_bad_base64(api: Api) -> None:
    with api.client() as client:
        r = client.post("/", data={"api_token": api.tokens["trial"], "audio": "not*base64!"})
    assert error_of(r)[0] == 50


# -- URLs -----------------------------------------------------------------------------------------
def url_cases(api: Api) -> dict[str, str]:
    own_port = urlsplit(api.base_url).port
    return {
        "404": api.media.url("/missing.wav"),
        "non-media page": api.media.url("/page.html"),
        "loopback not allowed": f"http://127.0.0.1:{own_port}/healthz",
        "cloud metadata": "http://169.254.169.254/latest/meta-data/",
        "redirect to metadata": api.media.url("/to-metadata"),
        "redirect to private": api.media.url("/to-private"),
        "malformed": "http//not a url",
        "no host": "http://",
        "not http": "ftp://example.com/song.mp3",
        "file scheme": "file:///etc/passwd",
    }


CASES = [
    "404",
    "non-media page",
    "loopback not allowed",
    "cloud metadata",
    "redirect to metadata",
    "redirect to private",
    "malformed",
    "no host",
    "not http",
    "file scheme",
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", ["/", "/enterprise"])
def test_bad_url(api: Api, case: str, path: str) -> None:
    url = url_cases(api)[case]
    with api.client() as client:
        r = client.post(path, data={"api_token": api.tokens["enterprise"], "url": url})
    code, message = error_of(r)
    assert code == 600, (code, message)


# -- parameters -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"skip": "-1"},
        {"every": "0"},
        {"limit": "abc"},
        {"limit": "-3"},
        {"skip_first_seconds": "ten"},
        {"skip_first_seconds": "-5"},
        {"use_timecode": "true", "skip_first_seconds": "10"},
        {"accurate_offsets": "maybe"},
        {"response_type": "xml"},
    ],
)
def test_invalid_enterprise_params(api: Api, params: dict[str, str]) -> None:
    token = api.new_token("enterprise")
    with api.client() as client:
        r = client.get(
            "/enterprise",
            params={"api_token": token, "url": api.media.url("/long.wav?t=10"), **params},
        )
    body = r.json()
    assert body["error"]["error_code"] == 50, body
    # the enterprise echo: requested_params (token masked) and execution_time
    assert body["requested_params"]["api_token"] == f"{token[:2]}***{token[-2:]}"
    assert token not in r.text
    assert body["request_api_method"] == "enterprise"
    assert body["request_http_method"] == "GET"
    assert body["execution_time"].endswith("s")


def test_error_body_of_standard(api: Api) -> None:
    token = api.tokens["trial"]
    with api.client() as client:
        r = client.post("/", data={"api_token": token, "url": "ftp://x/y.mp3"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {
        "status",
        "error",
        "request_params",
        "request_api_method",
        "request_http_method",
    }
    assert body["request_params"] == {
        "api_token": f"{token[:2]}***{token[-2:]}",
        "url": "ftp://x/y.mp3",
    }
    assert body["request_api_method"] == "recognize"
    assert body["request_http_method"] == "POST"


def test_unknown_method(api: Api) -> None:
    with api.client() as client:
        r = client.get("/", params={"api_token": api.tokens["trial"], "method": "lyrics"})
    assert error_of(r)[0] == 50


# -- tokens and entitlements ---------------------------------------------------------------------
def test_missing_and_bad_token(api: Api) -> None:
    with api.client() as client:
        assert error_of(client.get("/", params={"url": api.media.url("/clip.wav")}))[0] == 901
        r = client.get("/", params={"api_token": "0" * 40, "url": api.media.url("/clip.wav")})
        assert error_of(r)[0] == 900


def test_no_media(api: Api) -> None:
    with api.client() as client:
        assert error_of(client.post("/", data={"api_token": api.tokens["trial"]}))[0] == 700
        r = client.post("/enterprise", data={"api_token": api.tokens["trial"]})
        assert error_of(r)[0] == 700


def test_entitlements(api: Api) -> None:
    trial = api.tokens["trial"]
    with api.client() as client:
        r = client.post(
            "/upload/",
            data={"api_token": trial, "audio_id": "1", "url": api.media.url("/clip.wav")},
        )
        assert error_of(r)[0] == 904
        r = client.post("/enterprise", data={"api_token": trial, "url": api.media.url("/long.wav")})
        assert error_of(r)[0] == 904
    r = post_file(api, "clip.wav", wav_bytes(music(3, 10)), "/upload/")
    assert error_of(r) == (50, "audio_id is required: the integer id of this track")


def test_rate_limited_is_http_429(api: Api) -> None:
    token = api.new_token("slow")
    with api.client() as client:
        first = client.get("/", params={"api_token": token})
        assert error_of(first)[0] == 700  # the one request this second is spent
        r = client.get("/", params={"api_token": token, "url": api.media.url("/clip.wav")})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["status"] == "error"


# -- sizes ---------------------------------------------------------------------------------------
def test_standard_limits(api: Api) -> None:
    thirty_s = wav_bytes(excerpt(api.songs[1], 0, 30))
    code, message = error_of(post_file(api, "long.wav", thirty_s))
    assert code == 400 and "25" in message
    eleven_mb = b"RIFF" + b"\0" * (11 * 1024 * 1024)
    assert error_of(post_file(api, "big.wav", eleven_mb))[0] == 400
    # the same 30 s are fine for /enterprise
    r = post_file(api, "long.wav", thirty_s, "/enterprise")
    assert r.json()["status"] == "success"


def test_body_over_hard_cap(api: Api) -> None:
    too_big = b"\0" * ((MAX_BODY_MB + 1) * 1024 * 1024)
    try:
        r = post_file(api, "huge.wav", too_big, "/enterprise")
    except httpx.TransportError:
        pass  # the server may close before the client has sent everything: that is refusal too
    else:
        assert r.status_code == 413
        assert error_of(r)[0] == 400

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is enforced while streaming
        boundary = b"cap"
        yield b'--cap\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
        for _ in range(MAX_BODY_MB + 1):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--" + boundary + b"--\r\n"

    try:
        with api.client() as client:
            r = client.post(
                "/enterprise",
                params={"api_token": api.tokens["enterprise"]},
                content=chunks(),
                headers={"Content-Type": "multipart/form-data; boundary=cap"},
            )
    except httpx.TransportError:
        pass
    else:
        assert r.status_code == 413


def test_client_disconnects_mid_upload(api: Api) -> None:
    host, port = urlsplit(api.base_url).hostname, urlsplit(api.base_url).port
    assert host and port
    part = b'--edge\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    head = (
        f"POST /enterprise?api_token={api.tokens['enterprise']} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=edge\r\n"
        f"Content-Length: {5 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(head + part + wav_bytes(music(5, 10))[:300_000])
    # the autouse fixture checks the server is up and the partial upload is gone


# -- unexpected errors, logs, metrics ----------------------------------------------------------
def test_unexpected_error_is_code_100_with_request_id(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    recognition = api.app.state.recognition
    broken = replace(DEFAULT, fingerprint=replace(DEFAULT.fingerprint, n_fft=0, hop=0))
    recognition.engine_config = broken
    try:
        with caplog.at_level(logging.ERROR, logger="songscan.api"):
            r = post_file(api, "clip.wav", wav_bytes(excerpt(api.songs[2], 0, 10)))
    finally:
        recognition.engine_config = DEFAULT
    code, message = error_of(r)
    assert code == 100
    request_id = r.headers["x-request-id"]
    assert request_id in message
    assert "Traceback" not in r.text
    assert any(request_id in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_access_log_and_metrics(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    token = api.tokens["enterprise"]
    with caplog.at_level(logging.INFO, logger="songscan.access"), api.client() as client:
        r = client.get(
            "/enterprise", params={"api_token": token, "url": api.media.url("/long.wav")}
        )
    assert r.json()["status"] == "success"
    lines = [
        json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "songscan.access"
    ]
    line = next(x for x in lines if x["request_id"] == r.headers["x-request-id"])
    assert line["token"] == f"{token[:2]}***{token[-2:]}"
    assert line["chunks"] == 6 and line["billed"] == 6 and line["error_code"] == 0
    assert token not in caplog.text
    with api.client() as client:
        text = client.get("/metrics").text
    assert 'songscan_requests_total{api_method="enterprise",error_code="0"}' in text
    assert "songscan_chunks_scanned_total" in text
    assert "songscan_request_duration_seconds_bucket" in text
    assert "songscan_media_decoded_bytes_total" in text


def test_query_string_base64_get(api: Api) -> None:
    """`audio` in a GET query string is decoded too (a URL only holds a short clip: this one is
    decodable audio, too short to fingerprint, hence 300 rather than 500)."""
    clip = wav_bytes(excerpt(api.songs[2], 17.4, 17.8))
    audio = base64.b64encode(clip).decode()
    with api.client() as client:
        r = client.get("/", params={"api_token": api.tokens["trial"], "audio": audio})
    assert error_of(r)[0] == 300
