"""Enterprise scans on Celery workers, end to end over real servers: an API node (`songscan
serve`) with PostgreSQL, a Redis Cluster index and a Redis broker, and `songscan worker`
processes that share nothing on disk with it (each its own empty data dir; they read the media
from the node over signed range requests). The results equal the embedded scan's byte for byte;
a worker killed mid-run has its run delivered again and the job is billed once; a broker that
is down fails a request cleanly."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from songscan.accounts.models import LedgerEntry
from songscan.accounts.service import Accounts
from songscan.api.app import create_app
from tests.audio import synth_song, write_audio
from tests.servers import UvicornThread, free_port, start_redis

from .conftest import ApiNode, Deployment, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("celery")]

SEEDS = (61, 62, 63)
SONG_S = 60.0


def _songs(root: Path) -> tuple[list[Path], dict[int, np.ndarray]]:
    samples = {seed: synth_song(seed, SONG_S) for seed in SEEDS}
    paths = [write_audio(root / f"song{seed}.flac", samples[seed]) for seed in SEEDS]
    return paths, samples


def _show(path: Path, samples: dict[int, np.ndarray], repeats: int) -> Path:
    """The catalog's songs back to back, `repeats` times, with a little silence between."""
    gap = np.zeros(8000 * 3, dtype=np.float32)
    order = [samples[s] for s in (63, 61, 62)]
    parts = [part for song in order for part in (song, gap)] * repeats
    return write_audio(path, np.concatenate(parts))


def _catalog(deployment: Deployment) -> None:
    """The songs added through the shared catalog (PostgreSQL + the cluster), by a node that
    then goes away."""
    paths, _ = _songs(deployment.root)
    added = deployment.songscan(deployment.root / "ingest", "add", *paths)
    assert added.returncode == 0, added.stderr


def _token(deployment: Deployment) -> str:
    made = deployment.songscan(
        deployment.root / "admin", "accounts", "create", "--email", "ops@example.org",
        "--plan", "enterprise",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def _embedded(
    root: Path, audio: Path, fields: dict[str, str], upload: tuple[Path, int] | None = None
) -> dict[str, Any]:
    """The same scan through an embedded API node (SQLite, segment files, its process pool),
    after the same `upload` (a file and its audio_id) into the account's custom catalog."""
    data = root / "embedded"
    paths, _ = _songs(root)
    from songscan.catalog import Catalog, TrackMetadata
    from songscan.config import DEFAULT
    from songscan.ingest import IngestItem, ingest

    items = [IngestItem(p, TrackMetadata(), audio_id=i + 1) for i, p in enumerate(paths)]
    assert all(o.error is None for o in ingest(Catalog(data), items, DEFAULT, workers=1))
    accounts = Accounts.open(data, {})
    token = accounts.identity.create_account(plan="enterprise").token
    accounts.close()
    with UvicornThread(create_app(data, {})) as server:
        if upload is not None:
            assert _upload(server.base_url, token, *upload)["status"] == "success"
        return _post(server.base_url, token, audio, fields)


def _upload(base_url: str, token: str, audio: Path, audio_id: int) -> dict[str, Any]:
    with audio.open("rb") as fh:
        reply = httpx.post(
            f"{base_url}/upload/",
            data={"api_token": token, "audio_id": str(audio_id), "title": "Uploaded"},
            files={"file": (audio.name, fh)},
            timeout=300,
        )
    return reply.json()


def _post(base_url: str, token: str, audio: Path, fields: dict[str, str]) -> dict[str, Any]:
    with audio.open("rb") as fh:
        reply = httpx.post(
            f"{base_url}/enterprise",
            data={"api_token": token, **fields},
            files={"file": (audio.name, fh)},
            timeout=300,
        )
    return reply.json()


def _job_result(base_url: str, token: str, job_id: str) -> dict[str, Any]:
    def state() -> str:
        job = httpx.get(
            f"{base_url}/enterprise/jobs/{job_id}", params={"api_token": token}, timeout=30
        ).json()["result"]
        return str(job["state"])

    wait_for("the job finishes", lambda: state() not in ("queued", "running"), timeout_s=240)
    reply = httpx.get(
        f"{base_url}/enterprise/jobs/{job_id}/result", params={"api_token": token}, timeout=30
    )
    return reply.json()


def _without_time(body: dict[str, Any]) -> str:
    body = dict(body)
    body.pop("execution_time", None)
    return json.dumps(body, sort_keys=True)


def _access(node: ApiNode) -> list[dict[str, Any]]:
    """The node's access lines (JSON, on its output)."""
    return [json.loads(line) for line in node.process.output().splitlines() if line[:1] == "{"]


def _received(log: str) -> list[str]:
    return re.findall(r"scan_run\[([0-9a-f-]+)\] received", log)


def _usage(deployment: Deployment) -> list[Any]:
    accounts = Accounts(deployment.database_url, {}, data_dir=deployment.root / "admin")
    try:
        with accounts.engine.connect() as conn:
            query = select(LedgerEntry.status, LedgerEntry.delta, LedgerEntry.chunks).where(
                LedgerEntry.kind == "usage"
            )
            return list(conn.execute(query).all())
    finally:
        accounts.close()


def test_scans_on_two_workers_equal_the_embedded_scan(deployment: Deployment) -> None:
    _catalog(deployment)
    token = _token(deployment)
    _, samples = _songs(deployment.root)
    audio = _show(deployment.root / "show.flac", samples, repeats=4)  # 12.6 min: 3 runs
    fields = {"accurate_offsets": "true"}
    node = deployment.api_node("api")
    workers = [deployment.worker("worker1"), deployment.worker("worker2")]

    sync = _post(node.base_url, token, audio, fields)
    assert sync["status"] == "success", sync
    submitted = _post(node.base_url, token, audio, {**fields, "async": "true"})
    job = _job_result(node.base_url, token, submitted["result"]["job_id"])

    embedded = _embedded(deployment.root, audio, fields)
    assert embedded["status"] == "success" and len(embedded["result"]) >= 60
    assert _without_time(sync) == _without_time(embedded)
    assert _without_time(job) == _without_time(embedded)
    found = {c["songs"][0]["audio_id"] for c in sync["result"] if c["songs"]}
    assert found == {1, 2, 3}
    # both workers worked, and hold nothing of the scan on disk (only what Celery keeps)
    runs = [_received(w.output()) for w in workers]
    assert all(runs) and sum(map(len, runs)) == 6, runs
    for w in workers:
        assert not any(p.suffix == ".flac" for p in w.data.rglob("*"))
    metrics = httpx.get(f"{node.base_url}/metrics", timeout=10).text
    assert 'songscan_worker_runs_total{outcome="ok"} 6.0' in metrics
    assert "songscan_worker_run_seconds_count 6.0" in metrics
    total = submitted["result"]["progress"]["chunks_total"]
    assert total >= 60  # 12.6 minutes (the header's estimate)
    assert sorted(_usage(deployment)) == [("ok", -total, total)] * 2


def test_a_track_uploaded_through_one_api_node_is_found_by_a_scan_through_another(
    deployment: Deployment,
) -> None:
    """Two API nodes and two workers: a track added through node A (`/upload/`, the account's
    custom catalog: PostgreSQL and the cluster) is found by a scan sent to node B and run on
    the workers; the answer equals an embedded node's with the same catalog and upload."""
    _catalog(deployment)
    token = _token(deployment)
    _, samples = _songs(deployment.root)
    uploaded = synth_song(64, SONG_S)
    upload = (write_audio(deployment.root / "song64.flac", uploaded), 7)
    gap = np.zeros(8000 * 3, dtype=np.float32)
    audio = write_audio(
        deployment.root / "show.flac",
        np.concatenate([samples[61], gap, uploaded, gap, samples[62], gap] * 2),  # 2 runs
    )
    node_a, node_b = deployment.api_node("api-a"), deployment.api_node("api-b")
    workers = [deployment.worker("worker1"), deployment.worker("worker2")]

    assert _upload(node_a.base_url, token, *upload)["status"] == "success"
    scanned = _post(node_b.base_url, token, audio, {})
    assert scanned["status"] == "success", scanned
    found = {c["songs"][0]["audio_id"] for c in scanned["result"] if c["songs"]}
    assert found == {1, 2, 7}
    assert all(_received(w.output()) for w in workers)  # the scan ran on both
    # ... reading the media from node B over range requests: nothing of it is on their disks
    reads = [line for line in _access(node_b) if line["path"] == "/internal/media"]
    assert reads and {line["status"] for line in reads} == {206}, reads
    assert not any(p.suffix == ".flac" for w in workers for p in w.data.rglob("*"))
    assert _without_time(scanned) == _without_time(_embedded(deployment.root, audio, {}, upload))


def test_a_worker_killed_mid_run_has_its_run_delivered_again_and_the_job_is_billed_once(
    deployment: Deployment,
) -> None:
    _catalog(deployment)
    token = _token(deployment)
    _, samples = _songs(deployment.root)
    audio = _show(deployment.root / "day.flac", samples, repeats=8)  # 25 min: 6 runs
    node = deployment.api_node("api")
    doomed = deployment.worker("doomed")
    submitted = _post(node.base_url, token, audio, {"async": "true"})
    job_id = submitted["result"]["job_id"]
    wait_for("the doomed worker takes a run", lambda: _received(doomed.output()))
    (taken,) = _received(doomed.output())
    doomed.kill()  # mid-run: it has not acknowledged the run
    assert f"scan_run[{taken}] succeeded" not in doomed.output()
    survivor = deployment.worker("survivor")

    result = _job_result(node.base_url, token, job_id)
    assert result["status"] == "success", result
    assert taken in _received(survivor.output())  # delivered again, to the survivor
    total = submitted["result"]["progress"]["chunks_total"]
    assert total >= 120  # 25 minutes (the header's estimate)
    assert _usage(deployment) == [("ok", -total, total)]  # billed once


def test_a_job_on_the_workers_cancelled_through_another_node_stops_and_costs_nothing(
    deployment: Deployment,
) -> None:
    """A job submitted to node A runs on the workers; cancelled through node B, A stops taking
    its results, revokes its runs still out and refunds it."""
    _catalog(deployment)
    token = _token(deployment)
    _, samples = _songs(deployment.root)
    audio = _show(deployment.root / "day.flac", samples, repeats=16)  # 50 min: 12 runs
    node_a, node_b = deployment.api_node("api-a"), deployment.api_node("api-b")
    deployment.worker("worker")
    job_id = _post(node_a.base_url, token, audio, {"async": "true"})["result"]["job_id"]

    def job(base_url: str) -> dict[str, Any]:
        reply = httpx.get(
            f"{base_url}/enterprise/jobs/{job_id}", params={"api_token": token}, timeout=30
        )
        return dict(reply.json()["result"])

    wait_for("the first runs are back", lambda: job(node_b.base_url)["progress"]["chunks_done"])
    cancelled = httpx.post(
        f"{node_b.base_url}/enterprise/jobs/{job_id}/cancel",
        data={"api_token": token},
        timeout=30,
    ).json()["result"]
    assert cancelled["state"] == "cancelled"
    total = cancelled["progress"]["chunks_total"]
    assert cancelled["progress"]["chunks_done"] < total

    def revoked() -> float:
        metrics = httpx.get(f"{node_a.base_url}/metrics", timeout=10).text
        found = re.search(r'^songscan_worker_runs_total\{outcome="revoked"\} (\S+)$', metrics, re.M)
        return float(found.group(1)) if found else 0.0

    wait_for("node A revokes the runs still out", revoked, timeout_s=60)
    wait_for(
        "the refund", lambda: [delta for _, delta, _ in _usage(deployment)] == [0], timeout_s=60
    )
    assert job(node_a.base_url)["state"] == "cancelled"
    assert job(node_a.base_url)["progress"]["chunks_done"] < total


def test_a_scan_whose_runs_are_not_back_by_its_deadline_fails_cleanly(
    deployment: Deployment,
) -> None:
    """No worker on the broker: the scan fails at `scan_timeout_s` with error 100 naming the
    cause, nothing billed, its runs revoked (no worker started later runs them)."""
    _catalog(deployment)
    token = _token(deployment)
    _, samples = _songs(deployment.root)
    audio = _show(deployment.root / "show.flac", samples, repeats=1)
    config = deployment.root / "short.toml"
    config.write_text("[workers]\nvisibility_timeout_s = 6\nscan_timeout_s = 3\n")
    node = deployment.api_node("api", env={"SONGSCAN_CONFIG": str(config)})
    reply = _post(node.base_url, token, audio, {})
    assert reply["status"] == "error" and "result" not in reply, reply
    assert reply["error"]["error_code"] == 100
    assert "did not finish the scan in time" in reply["error"]["error_message"]
    assert {delta for _, delta, _ in _usage(deployment)} == {0}
    metrics = httpx.get(f"{node.base_url}/metrics", timeout=10).text
    assert 'songscan_worker_runs_total{outcome="failed"} 1.0' in metrics
    assert 'songscan_worker_runs_total{outcome="revoked"}' in metrics
    late = deployment.worker("late")  # the revocation did not reach it: the expiry does
    wait_for("the late worker drops the run", lambda: "Discarding revoked" in late.output())
    assert "succeeded" not in late.output()


def test_a_node_the_workers_cannot_reach_fails_its_scans_cleanly(deployment: Deployment) -> None:
    """A node whose SONGSCAN_NODE_URL the workers cannot reach: each run reports the songscan
    error (the media is unreachable) and the node answers it, code 100, nothing billed."""
    _catalog(deployment)
    token = _token(deployment)
    _, samples = _songs(deployment.root)
    audio = _show(deployment.root / "show.flac", samples, repeats=1)
    nowhere = {"SONGSCAN_NODE_URL": f"http://127.0.0.1:{free_port()}"}
    node = deployment.api_node("api", env=nowhere)
    deployment.worker("worker")
    reply = _post(node.base_url, token, audio, {})
    assert reply["status"] == "error" and "result" not in reply, reply
    assert reply["error"]["error_code"] == 100
    assert "cannot reach the API node for the media" in reply["error"]["error_message"]
    metrics = httpx.get(f"{node.base_url}/metrics", timeout=10).text
    assert 'songscan_worker_runs_total{outcome="error"} 1.0' in metrics
    assert {delta for _, delta, _ in _usage(deployment)} == {0}


def test_a_broker_that_is_down_fails_scans_cleanly_until_it_is_back(
    deployment: Deployment,
) -> None:
    """No partial result, nothing billed, the node stays up; once the broker is back (and a
    worker on it), the same node scans again without a restart."""
    _catalog(deployment)
    token = _token(deployment)
    _, samples = _songs(deployment.root)
    audio = _show(deployment.root / "show.flac", samples, repeats=1)
    port = free_port()
    later = {"SONGSCAN_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    node = deployment.api_node("api", env=later)
    for fields in ({}, {"async": "true"}):
        started = time.monotonic()
        reply = _post(node.base_url, token, audio, fields)
        if fields:  # the job is accepted, then fails as the synchronous call does
            reply = _job_result(node.base_url, token, reply["result"]["job_id"])
        assert time.monotonic() - started < 30
        assert reply["status"] == "error", reply
        assert reply["error"]["error_code"] == 100
        assert f"the broker at 127.0.0.1:{port}/0" in reply["error"]["error_message"]
        assert "result" not in reply
    assert httpx.get(f"{node.base_url}/healthz", timeout=10).status_code == 200
    assert node.process.output().count("cannot send the scan to the broker") == 2
    assert {delta for _, delta, _ in _usage(deployment)} == {0}  # released: nothing billed

    broker = start_redis(port)
    try:
        deployment.worker("worker", env=later)
        reply = _post(node.base_url, token, audio, {})
        assert reply["status"] == "success", reply
        assert {c["songs"][0]["audio_id"] for c in reply["result"]} == {1, 2, 3}
    finally:
        broker.stop()
