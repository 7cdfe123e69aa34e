"""`songscan worker`'s refusals: each one line on stderr, before any Celery output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import free_port

SHARED = {
    "SONGSCAN_DATABASE_URL": "postgresql+psycopg://songscan@127.0.0.1:1/songscan",
    "SONGSCAN_INDEX_URL": "redis-cluster://127.0.0.1:1",
}


def _worker(data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SONGSCAN_")}
    return subprocess.run(
        [sys.executable, "-m", "songscan.cli", "--data", str(data), "worker"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "songscan worker needs a broker: set SONGSCAN_BROKER_URL"),
        (  # the embedded catalog: a worker would see none of the API nodes' tracks
            {"SONGSCAN_BROKER_URL": "redis://127.0.0.1:6379/0"},
            "needs the shared catalog and index",
        ),
        (
            {
                "SONGSCAN_BROKER_URL": "redis://127.0.0.1:6379/0",
                "SONGSCAN_DATABASE_URL": "sqlite:////tmp/x.db",
                "SONGSCAN_INDEX_URL": "redis-cluster://127.0.0.1:1",
            },
            "needs the catalog in PostgreSQL",
        ),
        ({**SHARED, "SONGSCAN_BROKER_URL": "amqp://h:5672//"}, "unknown broker scheme 'amqp'"),
        (
            {**SHARED, "SONGSCAN_BROKER_URL": "redis://:hunter2@127.0.0.1:{port}/0"},
            "cannot reach the broker at 127.0.0.1:{port}/0",
        ),
    ],
)
def test_a_worker_that_cannot_work_says_why_in_one_line(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    port = str(free_port())
    env = {k: v.replace("{port}", port) for k, v in env.items()}
    done = _worker(tmp_path, env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error (100): "), done.stderr
    assert says.replace("{port}", port) in lines[0]
    assert "hunter2" not in done.stderr  # a broker's password is never shown
