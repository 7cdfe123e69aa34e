from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from songscan.catalog import Catalog, TrackMetadata
from songscan.config import DEFAULT
from songscan.index.rediscluster import RedisClusterIndex
from songscan.index.segments import SegmentIndex
from songscan.ingest import IngestItem, ingest
from tests.audio import RATE, synth_song, write_audio
from tests.servers import RedisCluster, start_redis_cluster

SONG_SECONDS = 60.0


@dataclass
class Library:
    data: Path
    songs: dict[int, np.ndarray]  # audio_id -> samples at RATE
    files: dict[int, Path]


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    """A catalog of three synthesised songs (audio_id 1, 2, 3)."""
    root = tmp_path_factory.mktemp("library")
    data = root / "data"
    songs, files, items = {}, {}, []
    for audio_id in (1, 2, 3):
        songs[audio_id] = synth_song(audio_id, SONG_SECONDS)
        files[audio_id] = write_audio(root / f"song{audio_id}.flac", songs[audio_id])
        items.append(
            IngestItem(
                files[audio_id], TrackMetadata(artist="Synth", title=f"Song {audio_id}"), audio_id
            )
        )
    outcomes = ingest(Catalog(data), items, DEFAULT, workers=1)
    assert all(o.error is None for o in outcomes)
    return Library(data, songs, files)


def set_format(data: Path, version: int) -> None:
    """Mark a data dir's catalog as written in index format `version` (an older songscan's)."""
    with sqlite3.connect(data / "catalog.sqlite") as db:
        db.execute("UPDATE catalog_state SET format = ? WHERE id = 1", (version,))


def stored_format(data: Path) -> int:
    with sqlite3.connect(data / "catalog.sqlite") as db:
        return int(db.execute("SELECT format FROM catalog_state").fetchone()[0])


def mix(parts: list[tuple[float, np.ndarray]], seconds: float) -> np.ndarray:
    """Place (start_s, samples) parts on a silent timeline of `seconds` at RATE."""
    out = np.zeros(int(seconds * RATE), dtype=np.float32)
    for start_s, samples in parts:
        i = round(start_s * RATE)
        n = min(samples.shape[0], out.shape[0] - i)
        out[i : i + n] += samples[:n]
    return out


def excerpt(song: np.ndarray, start_s: float, seconds: float) -> np.ndarray:
    i = round(start_s * RATE)
    return song[i : i + round(seconds * RATE)]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One Redis Cluster (3 masters, 3 replicas) per test worker; each test its own key prefix."""
    cluster = start_redis_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["segments", "redis-cluster"])
def open_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens the test's index (a new handle on the same postings at each call) on each
    backend: the segment files in a temp dir, or a fresh key prefix on the Redis Cluster."""
    opened: list[Any] = []
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def open_one() -> Any:
        if request.param == "segments":
            index: Any = SegmentIndex(tmp_path / "index")
        else:
            cluster: RedisCluster = request.getfixturevalue("redis_cluster")
            index = RedisClusterIndex(cluster.addresses, prefix, switch_grace_s=0.05)
        opened.append(index)
        return index

    yield open_one
    for index in opened:
        index.close()
