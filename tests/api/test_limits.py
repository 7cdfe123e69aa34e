"""What a header may claim, over real sockets: a sample rate no recording has, a frame count the
file cannot hold, a reference over `[media] max_reference_s`, a clip too short to fingerprint.
Each is answered from what the file can hold, and a refusal bills nothing."""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass

import av
import httpx
import numpy as np
import pytest
from sqlalchemy import select

from songscan.accounts.models import LedgerEntry
from songscan.accounts.service import Accounts
from songscan.api.app import create_app
from songscan.config import DEFAULT
from tests.api.conftest import Api
from tests.api.music import RATE, excerpt, music, wav_bytes
from tests.servers import UvicornThread


def mp3_bytes(samples: np.ndarray, kbps: int = 32) -> bytes:
    """`samples` as a CBR MP3 with its Xing/Info frame (written to a seekable file, as FFmpeg's
    muxer needs to fill in the frame count)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=RATE, layout="mono")  # type: ignore[call-overload]
        stream.bit_rate = kbps * 1000
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        for i in range(0, pcm.shape[0], 4096):
            frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 4096], format="s16", layout="mono")
            frame.sample_rate = RATE
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def with_frame_count(mp3: bytes, frames: int) -> bytes:
    """The MP3 with its Xing/Info header's frame count replaced (the duration FFmpeg reports)."""
    at = max(mp3.find(b"Xing"), mp3.find(b"Info"))
    assert at > 0, "no Xing/Info frame"
    flags = int.from_bytes(mp3[at + 4 : at + 8], "big")
    assert flags & 1, "the Xing frame carries no frame count"
    return mp3[: at + 8] + frames.to_bytes(4, "big") + mp3[at + 12 :]


def one_hz_wav(n_samples: int) -> bytes:
    """A valid 16-bit WAV whose header says 1 Hz: `n_samples` of noise claim as many seconds."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(1)
        noise = np.random.default_rng(3).integers(-20000, 20000, n_samples)
        out.writeframes(noise.astype("<i2").tobytes())
    return buffer.getvalue()


@dataclass(frozen=True)
class Usage:
    reserved: int
    billed: int
    chunks: int | None
    status: str | None


def usage(accounts: Accounts, account_id: int) -> list[Usage]:
    """The account's usage rows in the ledger, oldest first."""
    with accounts.engine.connect() as conn:
        rows = conn.execute(
            select(LedgerEntry.reserved, LedgerEntry.delta, LedgerEntry.chunks, LedgerEntry.status)
            .where(LedgerEntry.account_id == account_id, LedgerEntry.kind == "usage")
            .order_by(LedgerEntry.id)
        ).all()
    return [Usage(int(r.reserved), -int(r.delta), r.chunks, r.status) for r in rows]


def post(api_url: str, path: str, token: str, name: str, content: bytes, **data: str) -> dict:
    with httpx.Client(base_url=api_url, timeout=120) as client:
        r = client.post(path, data={"api_token": token, **data}, files={"file": (name, content)})
    assert r.status_code == 200
    assert "Traceback" not in r.text
    body: dict = r.json()
    return body


# -- item: a header's frame count drives neither the work nor the bill -------------------------
@pytest.fixture(scope="module")
def lying_mp3() -> bytes:
    """40 s of music in 160 KB whose Xing frame claims 2^31 frames (56 million seconds)."""
    return with_frame_count(mp3_bytes(music(21, 40.0)), 2**31)


def size_bound_chunks(n_bytes: int) -> int:
    """The chunks a compressed file of `n_bytes` can hold at the least plausible bitrate."""
    seconds = n_bytes * 8 / DEFAULT.limits.min_bitrate_bps
    return math.ceil(seconds / DEFAULT.scan.chunk_s)


def test_a_lying_frame_count_reserves_only_what_the_file_can_hold(
    api: Api, lying_mp3: bytes
) -> None:
    token = api.new_token("enterprise")  # 100,000 requests: the claim needs 4.7 million
    before = api.remaining(token)
    body = post(api.base_url, "/enterprise", token, "lie.mp3", lying_mp3)
    assert body["status"] == "success", body
    [row] = usage(api.accounts, api.account_id(token))
    assert 0 < row.reserved <= size_bound_chunks(len(lying_mp3))  # 54, not 4.7 million
    # settled on the chunks the file really holds: 0-12, 12-24, 24-36 and 36-40 s
    assert row.chunks == row.billed == 4 and row.status == "ok"
    assert api.remaining(token) == before - 4


def test_a_lying_frame_count_queues_a_job_of_what_the_file_can_hold(
    api: Api, lying_mp3: bytes
) -> None:
    token = api.new_token("enterprise")
    body = post(api.base_url, "/enterprise", token, "lie.mp3", lying_mp3, **{"async": "true"})
    assert body["status"] == "success", body
    total = body["result"]["progress"]["chunks_total"]
    assert 0 < total <= size_bound_chunks(len(lying_mp3))
    [row] = usage(api.accounts, api.account_id(token))
    assert row.reserved == total
    with httpx.Client(base_url=api.base_url, timeout=120) as client:  # no job left running
        client.delete(f"/enterprise/jobs/{body['result']['job_id']}", params={"api_token": token})


# -- item: a sample rate no recording has is refused from the header -------------------------
@pytest.mark.parametrize("path", ["/upload/", "/", "/enterprise"])
def test_a_one_hz_wav_is_refused_before_it_is_decoded(api: Api, path: str) -> None:
    token = api.new_token("enterprise")
    before = api.remaining(token)
    body = post(api.base_url, path, token, "slow.wav", one_hz_wav(600), audio_id="5")
    code, message = error_of_body(body)
    assert code == 500 and "1 Hz" in message, message
    assert api.remaining(token) == before
    assert usage(api.accounts, api.account_id(token)) == []  # refused before any reservation


def error_of_body(body: dict) -> tuple[int, str]:
    assert body["status"] == "error", body
    return body["error"]["error_code"], body["error"]["error_message"]


# -- item: the longest reference a server takes (`[media] max_reference_s`) -------------------
@pytest.fixture(scope="module")
def short_references(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Accounts]]:
    """A server of its own whose songscan.toml takes references of up to 30 s."""
    data = tmp_path_factory.mktemp("limits") / "data"
    data.mkdir()
    config = {
        "plans": {"enterprise": {"rate_limit_per_s": 1000}},
        "media": {"max_reference_s": 30},
    }
    app = create_app(data, config)
    with UvicornThread(app) as server:
        yield server.base_url, app.state.accounts


def test_a_reference_over_the_configured_length_is_refused(
    short_references: tuple[str, Accounts],
) -> None:
    base_url, accounts = short_references
    token = accounts.identity.create_account(plan="enterprise").token
    account = accounts.authenticate(token, "127.0.0.1")
    long = wav_bytes(music(31, 40.0))
    body = post(base_url, "/upload/", token, "long.wav", long, audio_id="1")
    code, message = error_of_body(body)
    assert code == 400 and "max_reference_s" in message, message
    assert usage(accounts, account.id) == []  # refused from the header, before a reservation
    # a header that claims less than the file holds: stopped by the decode, nothing billed
    understated = with_frame_count(mp3_bytes(music(32, 40.0)), 200)  # 200 frames: 10 s
    body = post(base_url, "/upload/", token, "under.mp3", understated, audio_id="2")
    code, message = error_of_body(body)
    assert code == 400 and "max_reference_s" in message, message
    assert [u.billed for u in usage(accounts, account.id)] == [0]
    body = post(base_url, "/upload/", token, "fits.wav", wav_bytes(music(33, 25.0)), audio_id="3")
    assert body["status"] == "success", body
    assert [u.billed for u in usage(accounts, account.id)] == [0, 1]


# -- item: a clip too short to fingerprint is error 300, billed nothing ------------------------
@pytest.mark.parametrize(("path", "seconds"), [("/", 0.5), ("/", 0.9), ("/enterprise", 0.5)])
def test_a_clip_too_short_to_fingerprint_is_error_300(api: Api, path: str, seconds: float) -> None:
    token = api.new_token("enterprise")
    before = api.remaining(token)
    clip = wav_bytes(excerpt(api.songs[2], 20.0, 20.0 + seconds))
    body = post(api.base_url, path, token, "short.wav", clip)
    code, message = error_of_body(body)
    assert code == 300 and "too short" in message, message
    assert api.remaining(token) == before
    assert all(u.billed == 0 for u in usage(api.accounts, api.account_id(token)))
