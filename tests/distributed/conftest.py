"""A deployment on loopback: PostgreSQL (catalog, accounts), a Redis Cluster (index), a
standalone Redis (the Celery broker), `songscan serve` API nodes and `songscan worker`
processes, each in its own session and its own empty data directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import (
    PostgresServer,
    RedisCluster,
    RedisServer,
    free_port,
    start_redis,
    start_redis_cluster,
)

SONGSCAN = [sys.executable, "-m", "songscan.cli"]
SECRET = "0123456789abcdef" * 4
VISIBILITY_S = 6  # a killed worker's run comes back after this long


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = start_redis_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def broker() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@dataclass
class Deployment:
    root: Path
    env: dict[str, str]  # what every node and worker is started with
    database_url: str
    started: list[subprocess.Popen[bytes]]

    def songscan(self, data: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SONGSCAN, "--data", str(data), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **self.env},
        )

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        """`songscan --data ROOT/NAME ARGS…` in its own session (an empty data dir of its
        own), its output in ROOT/NAME.log."""
        data = self.root / name
        data.mkdir()
        log = self.root / f"{name}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [*SONGSCAN, "--data", str(data), *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, **(env or {})},
                start_new_session=True,
            )
        self.started.append(proc)
        return Process(proc, data, log)

    def api_node(self, name: str, env: dict[str, str] | None = None) -> ApiNode:
        port = free_port()
        node_env = {"SONGSCAN_NODE_URL": f"http://127.0.0.1:{port}", **(env or {})}
        process = self.start(name, "serve", "--port", str(port), "--workers", "1", env=node_env)
        base_url = f"http://127.0.0.1:{port}"
        wait_for(
            f"{name} answers",
            lambda: _answers(base_url) or _exited(process),
            timeout_s=60,
        )
        assert process.proc.poll() is None, process.log.read_text()
        return ApiNode(process, base_url)

    def worker(self, name: str, env: dict[str, str] | None = None) -> Process:
        process = self.start(name, "worker", "--concurrency", "1", env=env)
        wait_for(f"{name} is ready", lambda: " ready." in process.output() or _exited(process))
        assert process.proc.poll() is None, process.output()
        return process


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    data: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (the machine it ran on is gone)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@dataclass
class ApiNode:
    process: Process
    base_url: str


def _answers(base_url: str) -> bool:
    try:
        httpx.get(f"{base_url}/healthz", timeout=5)
    except httpx.TransportError:
        return False
    return True


def _exited(process: Process) -> bool:
    return process.proc.poll() is not None


def wait_for(what: str, done: object, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.fixture
def deployment(
    tmp_path: Path,
    postgres_server: PostgresServer,
    redis_cluster: RedisCluster,
    broker: RedisServer,
) -> Iterator[Deployment]:
    config = tmp_path / "songscan.toml"  # outside every data dir
    config.write_text(f"[workers]\nvisibility_timeout_s = {VISIBILITY_S}\nscan_timeout_s = 240\n")
    database_url = postgres_server.create_database()
    env = {
        "SONGSCAN_DATABASE_URL": database_url,
        "SONGSCAN_INDEX_URL": f"{redis_cluster.url}?prefix=t{uuid.uuid4().hex[:8]}",
        "SONGSCAN_BROKER_URL": broker.url,
        "SONGSCAN_MEDIA_SECRET": SECRET,
        "SONGSCAN_CONFIG": str(config),
    }
    # a fresh broker database per test: no run of another test is left in its queue
    subprocess.run(
        ["redis-cli", "-p", str(broker.node.port), "FLUSHALL"], check=True, capture_output=True
    )
    deployment = Deployment(tmp_path, env, database_url, [])
    yield deployment
    for proc in deployment.started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
