"""A Redis master stops while a real API server (Uvicorn, `SONGSCAN_INDEX_URL` set) scans:
until its replica takes over, standard and enterprise requests fail cleanly with code 100
(logged once each, no traceback, nothing billed or left reserved), never with a partial
result; after the failover the same server answers as before."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.audio import synth_song, write_audio
from tests.servers import start_redis_cluster
from tests.test_serve import create_token, start_server, stop_server

from .conftest import excerpt
from .test_cli import run


def _left(data: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    """The account's requests left, and its recent request lines."""
    shown = run("--data", data, "accounts", "show", "ops@example.org", env=env)
    assert shown.returncode == 0, shown.stderr
    left = re.search(r"^left\s+(\d+)", shown.stdout, re.M)
    assert left is not None, shown.stdout
    recent = shown.stdout.split("recent requests:")[1].strip().splitlines()
    return int(left.group(1)), recent


def _ask(http: httpx.Client, path: str, token: str, clip: Path) -> dict:
    with clip.open("rb") as fh:
        reply = http.post(path, data={"api_token": token}, files={"file": (clip.name, fh)})
    body = reply.json()
    body.pop("execution_time", None)
    return body


@pytest.mark.slow
def test_scans_fail_cleanly_while_a_master_is_down_and_work_after_failover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = start_redis_cluster()
    try:
        env = {"SONGSCAN_INDEX_URL": f"{cluster.url}?prefix=failover"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # the server started below inherits it
        data = tmp_path / "data"
        data.mkdir()
        (data / "songscan.toml").write_text("[plans.enterprise]\nrate_limit_per_s = 1000\n")
        songs = [write_audio(tmp_path / f"t{s}.flac", synth_song(s, 40.0)) for s in (61, 62)]
        assert run("--data", data, "add", *songs, env=env).returncode == 0
        token = create_token(data, "--plan", "enterprise")  # ops@example.org
        show = write_audio(
            tmp_path / "show.flac",
            np.concatenate([excerpt(synth_song(s, 40.0), 3.0, 30.0) for s in (62, 61)]),
        )
        clip = write_audio(tmp_path / "clip.flac", excerpt(synth_song(61, 40.0), 10.0, 10.0))
        log_path = tmp_path / "server.log"
        proc, port = start_server(data, "--workers", "1", output=log_path)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                scanned = _ask(http, "/enterprise", token, show)
                standard = _ask(http, "/", token, clip)
                assert scanned["status"] == "success" and len(scanned["result"]) >= 4
                assert standard["status"] == "success" and standard["result"]["audio_id"] == 1
                left_before, recent_before = _left(data, env)

                cluster.masters()[0].stop()  # before its replica is promoted
                failed = [_ask(http, path, token, f) for path, f in [("/enterprise", show)] * 2]
                failed.append(_ask(http, "/", token, clip))
                for body in failed:
                    assert body["status"] == "error", body
                    assert body["error"]["error_code"] == 100, body
                    assert "Redis Cluster index is unavailable" in body["error"]["error_message"]
                left_down, recent_down = _left(data, env)
                assert left_down == left_before  # nothing billed, no reservation kept
                assert not any("error" in line for line in recent_before)
                errors = [line for line in recent_down if "error" in line]
                assert len(errors) == 3
                assert all(line.endswith("cost=0 error 100") for line in errors)

                cluster.wait_ok(timeout_s=60)  # the replica took over: the same server again
                deadline = time.monotonic() + 60
                while (again := _ask(http, "/enterprise", token, show))["status"] != "success":
                    assert again["error"]["error_code"] == 100, again
                    assert time.monotonic() < deadline, again
                    time.sleep(0.5)
                assert again == scanned
                assert _ask(http, "/", token, clip) == standard
        finally:
            stop_server(proc)
        output = log_path.read_text()
        assert "Traceback" not in output
        access = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        failures = [line for line in access if line.get("error_code") == 100]
        assert len(failures) >= 3 and all(line["billed"] == 0 for line in failures)
        # One line per failed request (its access line): the error is not logged again.
        assert output.count("Redis Cluster index is unavailable") <= len(failures)
    finally:
        cluster.stop()
