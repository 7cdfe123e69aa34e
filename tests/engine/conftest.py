from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from songscan.catalog import Catalog, TrackMetadata
from songscan.config import DEFAULT
from songscan.ingest import IngestItem, ingest
from tests.audio import RATE, synth_song, write_audio

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
