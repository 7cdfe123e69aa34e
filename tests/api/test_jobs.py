"""Long enterprise jobs (`/enterprise` with `async=true`, `/enterprise/jobs`) over real sockets.

Restart survival (a server killed under a running job) is in tests/test_jobs.py.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import numpy as np
import pytest

from tests.api.conftest import Api, error_of, long_recording
from tests.api.music import wav_8k, wav_bytes

FINISHED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def long_wav(api: Api) -> bytes:
    return wav_bytes(long_recording(api.songs))


@pytest.fixture(scope="module")
def longer_wav(api: Api) -> bytes:
    """10.8 minutes (54 chunks: three units of work, so progress moves in steps)."""
    return wav_8k(np.tile(long_recording(api.songs), 9))


def submit(
    client: httpx.Client, token: str, params: dict[str, str], media: bytes | None = None
) -> dict[str, Any]:
    files = {"file": ("long.wav", media)} if media is not None else None
    r = client.post(
        "/enterprise", data={"api_token": token, "async": "true", **params}, files=files
    )
    body = r.json()
    assert body["status"] == "success", body
    return body["result"]


def poll(client: httpx.Client, token: str, job_id: str) -> dict[str, Any]:
    body = client.get(f"/enterprise/jobs/{job_id}", params={"api_token": token}).json()
    assert body["status"] == "success", body
    return body["result"]


def wait_for(
    client: httpx.Client, token: str, job_id: str, states: tuple[str, ...] = FINISHED
) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        job = poll(client, token, job_id)
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def wait_cleaned(api: Api, job_id: str) -> None:
    """The job's media directory is gone (its follow-ups ran)."""
    deadline = time.monotonic() + 30
    while (api.data_dir / "jobs" / job_id).exists():
        assert time.monotonic() < deadline, "the job's media was not deleted"
        time.sleep(0.02)


def without_time(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "execution_time"}


@pytest.mark.parametrize(
    "params",
    [
        {"accurate_offsets": "true", "every": "2", "skip": "1"},
        {"response_type": "segments"},
        {"response_type": "csv", "accurate_offsets": "true"},
    ],
)
def test_job_result_equals_the_synchronous_call(
    api: Api, long_wav: bytes, params: dict[str, str]
) -> None:
    token = api.new_token("enterprise")
    before = api.remaining(token)
    with api.client() as client:
        job = submit(client, token, params, long_wav)
        assert job["state"] == "queued"
        assert job["progress"]["chunks_total"] == (4 if "every" in params else 6)
        reserved = job["progress"]["chunks_total"]
        assert api.remaining(token) == before - reserved  # reserved at submission
        assert api.leftover_media() == []  # the upload moved to the job's own directory

        done = wait_for(client, token, job["job_id"])
        assert done["state"] == "done", done
        assert done["progress"] == {
            "chunks_done": reserved,
            "chunks_total": reserved,
            "fraction": 1.0,
        }
        assert done["created_at"] <= done["started_at"] <= done["finished_at"]
        assert done["billed"] == reserved
        assert done["attempts"] == 1
        wait_cleaned(api, job["job_id"])

        sync = client.post(
            "/enterprise", data={"api_token": token, **params}, files={"file": ("l.wav", long_wav)}
        )
        raw = client.get(f"/enterprise/jobs/{job['job_id']}/result", params={"api_token": token})
    assert raw.headers["content-type"] == sync.headers["content-type"]
    if params.get("response_type") == "csv":
        assert done["response"] == sync.text == raw.text
        assert sync.text.count("\r\n") > 5
    else:
        assert without_time(done["response"]) == without_time(sync.json())
        assert without_time(raw.json()) == without_time(sync.json())
        assert sync.json()["result"], "the comparison needs matches"
    assert api.remaining(token) == before - 2 * reserved  # the job once, the synchronous call once
    assert api.accounts.ledger.sum_and_balance(api.account_id(token))[0] == api.remaining(token)


def test_url_job_downloads_in_the_job(api: Api) -> None:
    token = api.new_token("startup")
    before = api.remaining(token)
    params = {"url": api.media.url("/long.wav"), "skip_first_seconds": "12"}
    with api.client() as client:
        job = submit(client, token, params)
        assert job["progress"]["chunks_total"] is None  # known once downloaded
        assert api.remaining(token) == before
        done = wait_for(client, token, job["job_id"])
        assert done["state"] == "done", done
        assert done["progress"]["chunks_total"] == done["billed"] == 5
        wait_cleaned(api, job["job_id"])
        sync = client.post("/enterprise", data={"api_token": token, **params}).json()
    assert without_time(done["response"]) == without_time(sync)
    assert api.remaining(token) == before - 10


def test_progress_and_cancel(api: Api, longer_wav: bytes, long_wav: bytes) -> None:
    """One job at a time: the second waits queued. Cancelling either refunds everything and
    deletes the media; a cancelled job stays cancelled."""
    token = api.new_token("enterprise")
    before = api.remaining(token)
    with api.client() as client:
        first = submit(client, token, {}, longer_wav)
        second = submit(client, token, {}, long_wav)
        assert first["progress"]["chunks_total"] == 54
        assert api.remaining(token) == before - 54 - 6
        running = wait_for(client, token, first["job_id"], ("running", *FINISHED))
        assert running["state"] == "running"
        assert poll(client, token, second["job_id"])["state"] == "queued"

        r = client.post(f"/enterprise/jobs/{second['job_id']}/cancel", data={"api_token": token})
        assert r.json()["result"]["state"] == "cancelled"
        r = client.delete(f"/enterprise/jobs/{first['job_id']}", params={"api_token": token})
        assert r.json()["result"]["state"] == "cancelled"
        for job in (first, second):
            wait_cleaned(api, job["job_id"])
        time.sleep(0.5)  # a runner that missed the cancel would finish the job meanwhile
        for job in (first, second):
            polled = poll(client, token, job["job_id"])
            assert polled["state"] == "cancelled"
            assert polled["billed"] == 0 and "response" not in polled
        assert poll(client, token, first["job_id"])["progress"]["chunks_done"] < 54
        # cancelling again changes nothing; a cancelled job has no result
        r = client.delete(f"/enterprise/jobs/{first['job_id']}", params={"api_token": token})
        assert r.json()["result"]["state"] == "cancelled"
        r = client.get(f"/enterprise/jobs/{first['job_id']}/result", params={"api_token": token})
        assert error_of(r)[0] == 50
    assert api.remaining(token) == before


def test_progress_is_reported_while_a_job_runs(api: Api, longer_wav: bytes) -> None:
    """`every=1&skip=1` makes each chunk a unit of work of its own: progress after each."""
    token = api.new_token("enterprise")
    with api.client() as client:
        job = submit(client, token, {"every": "1", "skip": "1"}, longer_wav)
        seen = [job]
        while seen[-1]["state"] not in FINISHED:
            seen.append(poll(client, token, job["job_id"]))
            time.sleep(0.005)
    states = [s["state"] for s in seen]
    assert states[-1] == "done"
    assert states == sorted(states, key=["queued", "running", "done"].index)
    counts = [s["progress"]["chunks_done"] for s in seen]
    assert counts == sorted(counts) and counts[-1] == 27
    assert {s["progress"]["chunks_total"] for s in seen} == {27}
    assert any(0 < s["progress"]["fraction"] < 1 for s in seen if s["state"] == "running")


def test_a_token_sees_only_its_own_jobs(api: Api, long_wav: bytes) -> None:
    owner, other = api.new_token("enterprise"), api.new_token("enterprise")
    with api.client() as client:
        job = submit(client, owner, {}, long_wav)
        job_id = job["job_id"]
        for r in (
            client.get(f"/enterprise/jobs/{job_id}", params={"api_token": other}),
            client.get(f"/enterprise/jobs/{job_id}/result", params={"api_token": other}),
            client.delete(f"/enterprise/jobs/{job_id}", params={"api_token": other}),
            client.post(f"/enterprise/jobs/{job_id}/cancel", data={"api_token": other}),
        ):
            code, message = error_of(r)
            assert code == 50 and "no job" in message
            body = r.json()
            assert body["requested_params"]["api_token"] == f"{other[:2]}***{other[-2:]}"
            assert body["request_api_method"] == "jobs"
        listed = client.get("/enterprise/jobs", params={"api_token": other}).json()
        assert listed == {"status": "success", "result": []}
        assert wait_for(client, owner, job_id)["state"] == "done"  # the other's cancel did nothing
        listed = client.get("/enterprise/jobs", params={"api_token": owner}).json()["result"]
        assert [j["job_id"] for j in listed] == [job_id]
        assert "response" not in listed[0]

        assert error_of(client.get(f"/enterprise/jobs/{job_id}"))[0] == 901
        r = client.get(f"/enterprise/jobs/{job_id}", params={"api_token": "not-a-real-token"})
        assert error_of(r)[0] == 900


def test_job_routes_are_logged_and_counted(
    api: Api, long_wav: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    token = api.new_token("enterprise")
    with caplog.at_level(logging.INFO, logger="songscan.access"), api.client() as client:
        job_id = submit(client, token, {}, long_wav)["job_id"]
        seen = client.get(f"/enterprise/jobs/{job_id}", params={"api_token": token})
        missing = client.get("/enterprise/jobs/no-such-job", params={"api_token": token})
        metrics = client.get("/metrics").text
        wait_for(client, token, job_id)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "songscan.access"]
    by_id = {line["request_id"]: line for line in lines}
    line = by_id[seen.headers["x-request-id"]]
    assert line["api_method"] == "jobs" and line["error_code"] == 0 and line["status"] == 200
    assert line["path"] == f"/enterprise/jobs/{job_id}" and line["account"] is not None
    assert line["token"] == f"{token[:2]}***{token[-2:]}" and token not in caplog.text
    assert by_id[missing.headers["x-request-id"]]["error_code"] == 50
    assert 'songscan_requests_total{api_method="jobs",error_code="0"}' in metrics
    assert 'songscan_requests_total{api_method="jobs",error_code="50"}' in metrics


def _drained(api: Api, plan: str) -> str:
    token = api.new_token(plan)
    account = api.accounts.authenticate(token, "127.0.0.1")
    left = api.accounts.remaining(account)
    api.accounts.settle(api.accounts.reserve(account, left, "test"), left, "ok", 0)
    return token


@pytest.mark.parametrize(
    ("plan", "params", "media", "expected_code"),
    [
        ("enterprise", {"skip": "-1"}, "long", 50),
        ("enterprise", {"async": "perhaps"}, "long", 50),
        ("enterprise", {"use_timecode": "true", "skip_first_seconds": "3"}, "long", 50),
        ("enterprise", {"response_type": "xml"}, "long", 50),
        ("enterprise", {}, None, 700),
        ("enterprise", {}, "text", 500),
        ("trial", {"url": "http://127.0.0.1:9/long.wav"}, None, 904),
        ("enterprise", {"url": "http://10.0.0.1/long.wav"}, None, 600),
        ("enterprise", {"url": "ftp://example.com/long.wav"}, None, 600),
        ("drained-trial", {}, "long", 902),
        ("drained-startup", {"url": "URL"}, None, 902),
    ],
)
def test_bad_requests_are_answered_at_once(
    api: Api,
    long_wav: bytes,
    plan: str,
    params: dict[str, str],
    media: str | None,
    expected_code: int,
) -> None:
    token = _drained(api, plan.split("-")[1]) if plan.startswith("drained") else api.new_token(plan)
    if params.get("url") == "URL":
        params = {"url": api.media.url("/long.wav")}
    before = api.remaining(token)
    body = {"long": long_wav, "text": b"this is not audio, just text in a .wav"}
    files = {"file": ("x.wav", body[media])} if media else None
    with api.client() as client:
        r = client.post(
            "/enterprise", data={"api_token": token, "async": "true", **params}, files=files
        )
        code, _message = error_of(r)
        assert code == expected_code
        echo = r.json()
        assert echo["request_api_method"] == "enterprise"
        assert echo["requested_params"]["api_token"] == f"{token[:2]}***{token[-2:]}"
        assert "execution_time" in echo
        listed = client.get("/enterprise/jobs", params={"api_token": token}).json()
    assert listed == {"status": "success", "result": []}
    assert api.remaining(token) == before
    assert api.leftover_media() == []


def test_a_failed_job_reports_the_contract_error(api: Api) -> None:
    token = api.new_token("startup")
    before = api.remaining(token)
    with api.client() as client:
        job = submit(client, token, {"url": api.media.url("/page.html"), "limit": "3"})
        failed = wait_for(client, token, job["job_id"])
        raw = client.get(f"/enterprise/jobs/{job['job_id']}/result", params={"api_token": token})
        sync = client.post(
            "/enterprise", data={"api_token": token, "url": api.media.url("/page.html")}
        )
    assert failed["state"] == "failed"
    assert failed["error"]["error_code"] == 600 == error_of(sync)[0]
    assert failed["error"]["error_message"] == error_of(sync)[1]
    assert failed["billed"] == 0 and "response" not in failed
    error_body = raw.json()
    assert error_body["status"] == "error"
    assert error_body["error"] == failed["error"]
    assert error_body["requested_params"]["api_token"] == f"{token[:2]}***{token[-2:]}"
    assert error_body["requested_params"]["limit"] == "3"
    assert error_body["request_api_method"] == "enterprise"
    assert api.remaining(token) == before
    wait_cleaned(api, job["job_id"])
