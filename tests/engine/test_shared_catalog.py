"""Two songscan nodes that share nothing on disk, only the settings' PostgreSQL (catalog) and
Redis Cluster (index): what one adds, the other finds, with the embedded result."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from tests.audio import synth_song, write_audio
from tests.servers import PostgresServer, RedisCluster

from .conftest import excerpt
from .test_cli import run


def _result(stdout: str) -> dict:
    body = json.loads(stdout)
    body.pop("execution_time", None)
    return body


def test_tracks_added_on_one_node_are_found_by_a_scan_on_another(
    tmp_path: Path, postgres_server: PostgresServer, redis_cluster: RedisCluster
) -> None:
    shared = {
        "SONGSCAN_DATABASE_URL": postgres_server.create_database(),
        "SONGSCAN_INDEX_URL": f"{redis_cluster.url}?prefix=t{uuid.uuid4().hex[:8]}",
    }
    node_a, node_b, embedded = tmp_path / "a", tmp_path / "b", tmp_path / "embedded"
    seeds = (51, 52, 53)
    songs = [write_audio(tmp_path / f"t{s}.flac", synth_song(s, 40.0)) for s in seeds]
    added = run("--data", node_a, "add", *songs, env=shared)
    assert added.returncode == 0, added.stderr
    assert run("--data", embedded, "add", *songs).returncode == 0
    show = write_audio(
        tmp_path / "show.flac",
        np.concatenate([excerpt(synth_song(s, 40.0), 3.0, 34.0) for s in (53, 51, 52)] * 2),
    )
    on_b = run("--data", node_b, "scan", "--workers", "2", show, env=shared)
    assert on_b.returncode == 0, on_b.stderr
    alone = run("--data", embedded, "scan", "--workers", "2", show)
    assert _result(on_b.stdout) == _result(alone.stdout)
    found = [c["songs"][0]["audio_id"] for c in json.loads(on_b.stdout)["result"]]
    assert set(found) == {1, 2, 3}
    # Node B holds no catalog and no postings of its own.
    assert not (node_b / "catalog.sqlite").exists()
    assert not any((node_b / "index").glob("*.npy"))
