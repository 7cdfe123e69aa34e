"""The three AudD methods over real sockets: standard `/`, `/enterprise`, `/upload/`."""

from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path

import pytest

from songscan import media
from songscan.results import CSV_COLUMNS
from tests.api.conftest import Api, error_of, long_recording, song_metadata
from tests.api.music import excerpt, music, wav_bytes

STANDARD_KEYS = {"artist", "title", "album", "release_date", "label", "timecode", "song_link"}
# (offset in the long recording, audio_id, song position in ms) of each matching chunk
LONG_EXPECTED = [
    ("00:12", 1, 6400),
    ("00:24", 1, 18400),
    ("00:36", 1, 30400),
    ("00:48", 3, 400),
    ("01:00", 3, 12400),
]


@pytest.fixture(scope="module")
def clip(api: Api) -> bytes:
    """20 s of song 2 from 17.4 s on."""
    return wav_bytes(excerpt(api.songs[2], 17.4, 37.4))


@pytest.fixture(scope="module")
def long_wav(api: Api) -> bytes:
    return wav_bytes(long_recording(api.songs))


def assert_song_2(result: dict) -> None:
    assert set(result) >= STANDARD_KEYS
    meta = song_metadata(2)
    assert result["title"] == meta.title
    assert result["artist"] == meta.artist
    assert result["album"] == meta.album
    assert result["release_date"] == meta.release_date
    assert result["label"] == meta.label
    assert result["song_link"] == meta.song_link
    assert result["timecode"] == "00:17"
    assert result["audio_id"] == 2


# -- standard --------------------------------------------------------------------------------
def test_standard_multipart_file(api: Api, clip: bytes) -> None:
    token = api.new_token("trial")
    before = api.remaining(token)
    with api.client() as client:
        r = client.post("/", data={"api_token": token}, files={"file": ("clip.wav", clip)})
    assert r.status_code == 200
    assert r.headers["x-request-id"]
    body = r.json()
    assert body["status"] == "success"
    assert_song_2(body["result"])
    assert api.remaining(token) == before - 1
    assert api.leftover_media() == []


def test_standard_request_opens_its_clip_once(
    api: Api, clip: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its length is judged from the same open that is decoded (a probe was a second open).
    opened: list[str] = []
    real_open = media._open

    def counting_open(p: Path) -> object:
        opened.append(Path(p).name)
        return real_open(p)

    monkeypatch.setattr(media, "_open", counting_open)
    with api.client() as client:
        r = client.post(
            "/", data={"api_token": api.tokens["trial"]}, files={"file": ("clip.wav", clip)}
        )
    assert_song_2(r.json()["result"])
    assert len(opened) == 1


def test_standard_base64_urlencoded(api: Api, clip: bytes) -> None:
    with api.client() as client:
        r = client.post(
            "/",
            data={"api_token": api.tokens["trial"], "audio": base64.b64encode(clip).decode()},
        )
    assert_song_2(r.json()["result"])


def test_standard_base64_data_url_urlsafe(api: Api, clip: bytes) -> None:
    """A data URL and the URL-safe alphabet are the same payload."""
    encoded = base64.urlsafe_b64encode(clip).decode().rstrip("=")
    with api.client() as client:
        r = client.post(
            "/",
            data={"api_token": api.tokens["trial"], "audio": f"data:audio/wav;base64,{encoded}"},
        )
    assert_song_2(r.json()["result"])


def test_standard_base64_multipart_field_and_method(api: Api, clip: bytes) -> None:
    with api.client() as client:
        r = client.post(
            "/?method=recognize",
            data={"api_token": api.tokens["trial"], "audio": base64.b64encode(clip).decode()},
            files={"unrelated": ("x.txt", b"ignored")},
        )
    assert_song_2(r.json()["result"])


def test_standard_get_url(api: Api) -> None:
    with api.client() as client:
        r = client.get(
            "/", params={"api_token": api.tokens["trial"], "url": api.media.url("/clip.wav")}
        )
    assert_song_2(r.json()["result"])
    assert api.leftover_media() == []


def test_standard_no_match(api: Api) -> None:
    unknown = wav_bytes(music(4242, 15))
    with api.client() as client:
        r = client.post(
            "/", data={"api_token": api.tokens["trial"]}, files={"file": ("u.wav", unknown)}
        )
    assert r.json() == {"status": "success", "result": None}


# -- enterprise ------------------------------------------------------------------------------
def check_long(result: list[dict], expected: list[tuple[str, int, int]]) -> None:
    assert [c["offset"] for c in result] == [e[0] for e in expected]
    for chunk, (_offset, audio_id, position_ms) in zip(result, expected, strict=True):
        best = chunk["songs"][0]
        assert best["audio_id"] == audio_id
        assert best["title"] == f"Song {audio_id}"
        assert abs(best["timecode_ms"] - position_ms) <= 300
        assert best["timecode"] == f"00:{position_ms // 1000:02d}"


def test_enterprise_file_with_offsets_and_metadata(api: Api, long_wav: bytes) -> None:
    token = api.new_token("enterprise")
    before = api.remaining(token)
    with api.client() as client:
        r = client.post(
            "/enterprise",
            data={"api_token": token, "accurate_offsets": "true"},
            files={"file": ("long.wav", long_wav)},
        )
    body = r.json()
    assert body["status"] == "success", body
    assert re.fullmatch(r"\d+\.\d\ds", body["execution_time"])
    check_long(body["result"], LONG_EXPECTED)
    for chunk in body["result"]:
        song = chunk["songs"][0]
        assert 0 <= song["start_offset"] < song["end_offset"] <= 12000
        assert song["isrc"] == f"USLB0000000{song['audio_id']}"
        assert 0 < song["score"] <= 100
        assert "upc" in song
    assert api.remaining(token) == before - 6  # six 12-second chunks, one unmatched
    assert api.leftover_media() == []


def test_enterprise_without_metadata_entitlement(api: Api, long_wav: bytes) -> None:
    with api.client() as client:
        r = client.post(
            "/enterprise",
            data={"api_token": api.tokens["trial"]},
            files={"file": ("long.wav", long_wav)},
        )
    body = r.json()
    check_long(body["result"], LONG_EXPECTED)
    for chunk in body["result"]:
        assert not {"isrc", "upc", "score", "start_offset", "end_offset"} & set(chunk["songs"][0])


@pytest.mark.parametrize(
    ("params", "expected", "billed"),
    [
        ({"every": "1", "skip": "1"}, [LONG_EXPECTED[1], LONG_EXPECTED[3]], 3),
        ({"limit": "2"}, [LONG_EXPECTED[0]], 2),
        ({"every": "2", "skip": "2"}, [LONG_EXPECTED[i] for i in (0, 3, 4)], 4),
        ({"skip_first_seconds": "12"}, LONG_EXPECTED, 5),
    ],
)
def test_enterprise_chunk_plan(
    api: Api, params: dict[str, str], expected: list[tuple[str, int, int]], billed: int
) -> None:
    token = api.new_token("startup")
    before = api.remaining(token)
    with api.client() as client:
        r = client.get(
            "/enterprise", params={"api_token": token, "url": api.media.url("/long.wav"), **params}
        )
    body = r.json()
    assert body["status"] == "success", body
    check_long(body["result"], expected)  # offsets stay file-absolute with skip_first_seconds
    assert api.remaining(token) == before - billed


def test_enterprise_use_timecode(api: Api) -> None:
    token = api.new_token("startup")
    before = api.remaining(token)
    url = api.media.url("/long.wav?t=24s")
    with api.client() as client:
        r = client.post(
            "/enterprise", data={"api_token": token, "url": url, "use_timecode": "true"}
        )
    check_long(r.json()["result"], LONG_EXPECTED[1:])
    assert api.remaining(token) == before - 4


def test_enterprise_host_serves_root(api: Api, long_wav: bytes) -> None:
    with api.client() as client:
        r = client.post(
            "/",
            headers={"Host": "enterprise.audd.io"},
            data={"api_token": api.tokens["enterprise"]},
            files={"file": ("long.wav", long_wav)},
        )
    check_long(r.json()["result"], LONG_EXPECTED)


def test_enterprise_segments(api: Api, long_wav: bytes) -> None:
    with api.client() as client:
        r = client.post(
            "/enterprise",
            data={"api_token": api.tokens["enterprise"], "response_type": "segments"},
            files={"file": ("long.wav", long_wav)},
        )
    segments = r.json()["result"]
    assert [s["audio_id"] for s in segments] == [1, 3]
    assert abs(segments[0]["start"] - 12) < 0.5 and abs(segments[0]["end"] - 48) < 0.5
    assert abs(segments[1]["start"] - 48) < 0.5 and abs(segments[1]["end"] - 72) < 0.5
    assert segments[0]["timecode"] == "00:06"


def test_enterprise_csv(api: Api, long_wav: bytes) -> None:
    with api.client() as client:
        r = client.post(
            "/enterprise",
            data={"api_token": api.tokens["enterprise"], "response_type": "csv"},
            files={"file": ("long.wav", long_wav)},
        )
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row[0] for row in rows[1:] if row[14] in ("1", "3")][:5] == [
        e[0] for e in LONG_EXPECTED
    ]


# -- custom catalog ----------------------------------------------------------------------------
def test_upload_then_recognise(api: Api) -> None:
    token = api.new_token("startup")
    own_song = music(555, 40)
    with api.client() as client:
        r = client.post(
            "/upload/",
            data={
                "api_token": token,
                "audio_id": "7",
                "title": "=SUM(A1:A9)",
                "artist": "@evil",
                "album": "+plus",
                "label": "-minus",
            },
            files={"file": ("mine.wav", wav_bytes(own_song))},
        )
        assert r.json() == {"status": "success", "result": None}
        query = wav_bytes(excerpt(own_song, 5.4, 25.4))
        r = client.post("/", data={"api_token": token}, files={"file": ("q.wav", query)})
        result = r.json()["result"]
        assert result["audio_id"] == 7
        assert result["title"] == "=SUM(A1:A9)"
        assert result["timecode"] == "00:05"

        # the CSV neutralises formula-like cells
        long = wav_bytes(excerpt(own_song, 0, 36))
        r = client.post(
            "/enterprise",
            data={"api_token": token, "response_type": "csv"},
            files={"file": ("l.wav", long)},
        )
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert rows and all(row["audio_id"] == "7" for row in rows)
        assert {row["title"] for row in rows} == {"'=SUM(A1:A9)"}
        assert {row["artist"] for row in rows} == {"'@evil"}
        assert {row["album"] for row in rows} == {"'+plus"}
        assert {row["label"] for row in rows} == {"'-minus"}

        # another account neither sees the track nor shares the audio_id namespace
        other = api.new_token("startup")
        r = client.post("/", data={"api_token": other}, files={"file": ("q.wav", query)})
        assert r.json()["result"] is None

        # the same audio_id again replaces the track (`method=upload` on `/` works too)
        r = client.post(
            "/",
            data={"api_token": token, "method": "upload", "audio_id": "7", "title": "Renamed"},
            files={"file": ("mine.wav", wav_bytes(own_song))},
        )
        assert r.json()["status"] == "success"
        r = client.post("/", data={"api_token": token}, files={"file": ("q.wav", query)})
        assert r.json()["result"]["title"] == "Renamed"
    assert api.leftover_media() == []


def test_quota_refused_up_front(api: Api, long_wav: bytes) -> None:
    token = api.new_token("trial")
    account = api.accounts.authenticate(token, "127.0.0.1")
    left = api.accounts.remaining(account)
    drain = api.accounts.reserve(account, left - 2, "test")
    api.accounts.settle(drain, left - 2, "ok", 0)
    with api.client() as client:
        r = client.post(
            "/enterprise", data={"api_token": token}, files={"file": ("long.wav", long_wav)}
        )
    code, message = error_of(r)
    assert code == 902
    assert "6" in message and "2" in message
    assert api.remaining(token) == 2


def test_enterprise_result_equals_the_cli_byte_for_byte(api: Api, long_wav: bytes) -> None:
    """The API and `songscan scan` share one scan function and one serialisation: the bodies
    are identical apart from execution_time."""
    import subprocess
    import sys

    path = api.files / "cli-compare.wav"
    path.write_bytes(long_wav)
    token = api.new_token("enterprise")
    with api.client() as client, path.open("rb") as fh:
        r = client.post(
            "/enterprise",
            data={"api_token": token, "accurate_offsets": "true", "skip": "1", "every": "2"},
            files={"file": ("long.wav", fh)},
        )
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "songscan.cli",
            "--data",
            str(api.data_dir),
            "scan",
            str(path),
            "--accurate-offsets",
            "--skip",
            "1",
            "--every",
            "2",
        ],
        capture_output=True,
        check=True,
        timeout=300,
    )

    def without_time(body: bytes) -> bytes:
        return re.sub(rb'"execution_time":"[0-9.]+s"', b'"execution_time":""', body.strip())

    assert r.json()["result"], "the comparison needs matches"
    assert without_time(r.content) == without_time(cli.stdout)
