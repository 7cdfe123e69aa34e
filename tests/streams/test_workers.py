"""Live streams when scaled out, over real servers on loopback: PostgreSQL (accounts, catalog),
a Redis Cluster (index), a Redis broker, a `songscan serve` API node and `songscan worker`
processes (each in its own session and empty data directory), Debian's Icecast fed in real
time, and a callback receiver. The API node serves the methods and listens to nothing; a
worker listens; when it is killed, the other one takes the stream over within 30 s, and no
play is reported twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from songscan.accounts.models import StreamLease, StreamListener
from songscan.accounts.service import Accounts
from songscan.streams.store import StreamStore
from tests.api.conftest import build_catalog
from tests.api.music import excerpt, music
from tests.distributed import conftest as deployed
from tests.distributed.conftest import ApiNode, Deployment, Process
from tests.streams.conftest import STREAMS_CONFIG
from tests.streams.radio import CallbackReceiver, Icecast, Piece, SourceClient
from tests.streams.test_live import TOLERANCE_S, unix

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("celery")]

# The scale-out tests' servers: PostgreSQL, a Redis Cluster, a broker, nodes and workers.
redis_cluster, broker, deployment = deployed.redis_cluster, deployed.broker, deployed.deployment

LEASE_S = float(STREAMS_CONFIG["lease_s"])
TAKEOVER_S = 30.0  # the bound on a dead worker's stream being listened to again


def _configure(deployment: Deployment) -> None:
    """The deployment's songscan.toml, with what the streams need: loopback allowed for the
    streams and the callbacks, and the stream tests' short timings."""
    config = deployment.env["SONGSCAN_CONFIG"]
    streams = "\n".join(f"{key} = {value}" for key, value in STREAMS_CONFIG.items())
    with open(config, "a") as out:
        out.write(f'\n[api]\nurl_allow = ["127.0.0.1"]\n\n[streams]\n{streams}\n')


class Streams:
    """The test's view of the shared accounts database: a token, and who holds what."""

    def __init__(self, deployment: Deployment) -> None:
        self.accounts = Accounts(deployment.database_url, {})  # the API node migrated it
        self.store = StreamStore(self.accounts.engine)
        made = self.accounts.identity.create_account(plan="enterprise")
        self.token, self.account_id = made.token, made.account.id

    def stream_id(self, radio_id: int) -> int:
        return next(s.id for s in self.store.of_account(self.account_id) if s.radio_id == radio_id)

    def owners(self) -> dict[int, str]:
        """Each leased stream's owner, expired leases included."""
        with self.accounts.engine.connect() as conn:
            rows = conn.execute(select(StreamLease.stream_id, StreamLease.owner)).all()
        return {int(r.stream_id): r.owner for r in rows}

    def listeners(self) -> dict[str, int]:
        """The listening processes: their owner id and pid."""
        with self.accounts.engine.connect() as conn:
            rows = conn.execute(select(StreamListener.id, StreamListener.pid)).all()
        return {r.id: int(r.pid) for r in rows}

    def close(self) -> None:
        self.accounts.close()


def _call(node: ApiNode, method: str, token: str, **params: object) -> dict[str, Any]:
    data = {"api_token": token, **{k: str(v) for k, v in params.items()}}
    body: dict[str, Any] = httpx.post(f"{node.base_url}/{method}/", data=data, timeout=60).json()
    return body


def _owners(worker: Process) -> list[str]:
    """The owner ids of a worker's stream processes so far, from their log lines."""
    marker = "listening to streams (owner "
    return [part.split(")", 1)[0] for part in worker.output().split(marker)[1:]]


def _owner_of(worker: Process) -> str:
    return str(_wait(f"{worker.data.name} listens", lambda: _owners(worker), 60)[0])


def _wait(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)
    return found


def test_api_nodes_with_a_broker_do_not_listen_the_workers_do(
    deployment: Deployment, icecast: Icecast
) -> None:
    """With a broker, `songscan serve` runs no listeners: a stream added through it is
    listened to once a worker runs. The worker's stream process, killed alone, is started
    again and listens again; `deleteStream` then stops the worker's listener."""
    _configure(deployment)
    node = deployment.api_node("api")
    streams = Streams(deployment)
    source = SourceClient(icecast, "alone.mp3", [Piece("unknown", music(931, 150.0))]).play()
    try:
        added = _call(node, "addStream", streams.token, url=icecast.url("alone.mp3"), radio_id=3)
        assert added["status"] == "success", added
        time.sleep(LEASE_S)  # three of a listener's ticks
        assert icecast.listeners("alone.mp3") == 0
        assert streams.owners() == {} and streams.listeners() == {}
        worker = deployment.worker("w1")
        owner = _owner_of(worker)
        stream_id = streams.stream_id(3)
        _wait("the worker listens", lambda: icecast.listeners("alone.mp3") == 1, 30)
        assert streams.owners() == {stream_id: owner}
        assert list(streams.listeners()) == [owner]  # the API node is no listener
        os.kill(streams.listeners()[owner], signal.SIGKILL)  # it crashes, the worker runs on
        again = _wait("the stream process runs again", lambda: _owners(worker)[1:], 60)[0]
        _wait(
            "it listens again",
            lambda: streams.owners() == {stream_id: again} and icecast.listeners("alone.mp3") == 1,
            30,
        )
        deleted = _call(node, "deleteStream", streams.token, radio_id=3)
        assert deleted["status"] == "success", deleted
        _wait("the listener stops", lambda: icecast.listeners("alone.mp3") == 0, LEASE_S)
        assert streams.owners() == {}
    finally:
        source.stop()
        streams.close()


def _songs(deployment: Deployment) -> dict[int, np.ndarray]:
    """The API tests' three synthetic songs, in the shared catalog and index."""
    files = deployment.root / "files"
    files.mkdir()
    index_url = deployment.env["SONGSCAN_INDEX_URL"]
    return build_catalog(deployment.root / "ingest", files, deployment.database_url, index_url)


def test_a_dead_worker_s_stream_is_taken_over_and_no_play_is_reported_twice(
    deployment: Deployment, icecast: Icecast
) -> None:
    _configure(deployment)
    songs = _songs(deployment)
    node = deployment.api_node("api")
    workers = [deployment.worker("w1"), deployment.worker("w2")]
    owners = {_owner_of(w): w for w in workers}
    streams = Streams(deployment)
    programme = [
        Piece("unknown", music(921, 6.0)),
        Piece("song1", excerpt(songs[1], 0.0, 30.0)),
        Piece("song2", excerpt(songs[2], 0.0, 50.0)),
        Piece("song3", excerpt(songs[3], 10.0, 40.0)),
        Piece("unknown", music(922, 12.0)),
    ]
    with CallbackReceiver() as receiver:
        set_url = _call(node, "setCallbackUrl", streams.token, url=receiver.url())
        assert set_url["status"] == "success", set_url
        source = SourceClient(icecast, "takeover.mp3", programme).play()
        try:
            added = _call(
                node, "addStream", streams.token, url=icecast.url("takeover.mp3"), radio_id=5
            )
            assert added["status"] == "success", added
            stream_id = streams.stream_id(5)
            taken = _wait("a worker takes the stream", streams.owners, 10)
            first = owners[taken[stream_id]]
            # Song 1 is reported by the first owner; then it dies in the middle of song 2.
            assert receiver.wait_for(lambda r: len(r.results()) >= 1, timeout_s=60)
            first.kill()
            killed_at = time.monotonic()
            spare = next(w for w in workers if w is not first)
            spare_owner = next(o for o, w in owners.items() if w is spare)
            _wait(
                "the other worker takes the stream over",
                lambda: (
                    streams.owners().get(stream_id) == spare_owner
                    and icecast.listeners("takeover.mp3") == 1
                ),
                TAKEOVER_S,
            )
            took_s = time.monotonic() - killed_at
            source.wait()
            assert receiver.wait_for(lambda r: len(r.results()) >= 3, timeout_s=30)
            time.sleep(2)  # anything more (a duplicate) would come now
        finally:
            source.stop()
            streams.close()
    results = receiver.results()
    assert [r["results"][0]["title"] for r in results] == ["Song 1", "Song 2", "Song 3"], results
    assert took_s < TAKEOVER_S
    started = source.started
    for result, index in ((results[0], 1), (results[2], 3)):  # heard whole by one owner
        assert unix(result["timestamp"]) == pytest.approx(started[index], abs=TOLERANCE_S + 1)
        assert result["play_length"] == pytest.approx(programme[index].seconds, abs=TOLERANCE_S)
    # Song 2: its rest, as the new owner heard it (its first part died with the first owner).
    assert unix(results[1]["timestamp"]) > started[2] + TOLERANCE_S
    assert results[1]["play_length"] < programme[2].seconds - TOLERANCE_S
