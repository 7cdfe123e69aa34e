"""The catalog's database, on SQLite (the default) and on PostgreSQL: the same semantics,
schema kept by migrations, and a data dir written before those migrations upgraded in place."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine

from songscan.catalog import FORMAT, Catalog, TrackMetadata
from songscan.catalogdb import HEAD, VERSION_TABLE
from songscan.catalogdb.migrate import alembic_config
from songscan.catalogdb.schema import metadata
from songscan.config import DEFAULT
from songscan.ingest import IngestItem, ingest
from songscan.scan import recognize_clip
from tests.audio import synth_song, write_audio
from tests.servers import PostgresServer

from .conftest import excerpt

FIXTURE = Path(__file__).parent.parent / "data" / "catalog-v0"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None  # the default: catalog.sqlite in the data dir
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


def _songs(tmp_path: Path, seeds: list[int], owner: str = "") -> list[IngestItem]:
    items = []
    for seed in seeds:
        f = write_audio(tmp_path / f"s{seed}.flac", synth_song(seed, 20.0))
        items.append(IngestItem(f, TrackMetadata(title=f"Song {seed}"), None, owner=owner))
    return items


def _add(catalog: Catalog, items: list[IngestItem]) -> list[int]:
    outcomes = ingest(catalog, items, DEFAULT, workers=1)
    assert all(o.error is None for o in outcomes), outcomes
    return [o.track.audio_id for o in outcomes if o.track is not None]


def test_what_one_catalog_writes_another_sees_at_once(
    tmp_path: Path, database_url: str | None
) -> None:
    data = tmp_path / "data"
    writer = Catalog(data, database_url=database_url)
    reader = Catalog(data, database_url=database_url)  # another process's view
    assert reader.tracks() == []
    assert _add(writer, _songs(tmp_path, [1, 2])) == [1, 2]
    assert sorted(t.audio_id for t in reader.tracks()) == [1, 2]
    first = reader.get(1)
    # Replacing audio_id 1: a new track id, the old one's peaks gone.
    _add(writer, [IngestItem(_songs(tmp_path, [3])[0].path, TrackMetadata(title="New"), 1)])
    assert reader.get(1).metadata.title == "New" and reader.get(1).id != first.id
    assert len(reader.peaks(first.id)) == 0
    writer.remove(2)
    assert [t.audio_id for t in reader.tracks()] == [1]
    assert reader.live_ids().tolist() == [reader.get(1).id]
    writer.close()
    reader.close()


def test_audio_ids_count_per_owner_and_pending_rows_stay_invisible(
    tmp_path: Path, database_url: str | None
) -> None:
    data = tmp_path / "data"
    catalog = Catalog(data, database_url=database_url)
    _add(catalog, _songs(tmp_path, [4]))
    assert _add(catalog, _songs(tmp_path, [5], owner="17")) == [1]  # its own numbering
    assert {(t.owner, t.audio_id) for t in catalog.tracks(owner=None)} == {("", 1), ("17", 1)}
    # A writer that died between writing its rows and making them ready left this behind:
    with catalog._store.transaction() as tx:
        tx.execute(
            "INSERT INTO tracks (owner, audio_id, state, added_at) VALUES ('', 9, 'pending', 0)"
        )
    other = Catalog(data, database_url=database_url)
    assert [t.audio_id for t in other.tracks()] == [1]
    _add(other, _songs(tmp_path, [6]))  # the next writer cleans up
    left = other._store.value("SELECT COUNT(*) AS n FROM tracks WHERE state = 'pending'")
    assert left == 0
    catalog.close()
    other.close()


def test_concurrent_writers_take_turns(tmp_path: Path, database_url: str | None) -> None:
    data = tmp_path / "data"
    batches = [_songs(tmp_path, [10 + k]) for k in range(4)]
    catalogs = [Catalog(data, database_url=database_url) for _ in batches]
    errors: list[BaseException] = []

    def write(catalog: Catalog, items: list[IngestItem]) -> None:
        try:
            _add(catalog, items)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=pair) for pair in zip(catalogs, batches, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(t.audio_id for t in catalogs[0].tracks()) == [1, 2, 3, 4]  # none lost, no twin
    for c in catalogs:
        c.close()


def _open_connections(data: Path, database_url: str | None) -> int:
    """The catalog database's connections open now: this process's file descriptors on the
    SQLite file, or PostgreSQL's sessions on the database."""
    if database_url is None:
        catalog_file = str((data / "catalog.sqlite").resolve())
        fds = Path("/proc/self/fd").iterdir()
        return sum(1 for fd in fds if os.path.realpath(fd) == catalog_file)
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://").replace(
        name, "postgres"
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,))
        return int(row.fetchone()[0])  # type: ignore[index]


def test_a_thread_s_connection_is_closed_once_the_thread_has_ended(
    tmp_path: Path, database_url: str | None
) -> None:
    """A listener thread per stream, each with a connection of its own: 40 threads that each
    read once and end leave no more connections open than a couple of live threads would
    (each was kept, open, until the catalog was closed)."""
    data = tmp_path / "data"
    catalog = Catalog(data, database_url=database_url)
    _add(catalog, _songs(tmp_path, [1]))
    before = _open_connections(data, database_url)
    for _ in range(40):
        reader = threading.Thread(target=lambda: catalog.tracks())
        reader.start()
        reader.join()
    assert _open_connections(data, database_url) <= before + 1  # the last thread's, at most
    catalog.close()


def test_a_chunks_candidate_peaks_come_in_one_query(tmp_path: Path) -> None:
    data = tmp_path / "data"
    catalog = Catalog(data)
    _add(catalog, _songs(tmp_path, [7, 8, 9]))
    ids = catalog.live_ids()
    statements: list[str] = []
    catalog._store._connection().set_trace_callback(statements.append)
    rng = np.random.default_rng(1)
    catalog.pair_postings(ids, rng.integers(0, 1 << 23, 500).astype(np.uint32), DEFAULT.fingerprint)
    assert [s for s in statements if "FROM peaks" in s] == [statements[0]]  # one, for all three
    assert len(statements) == 1
    singles = {t: catalog.peaks(t) for t in ids.tolist()}
    for t, peaks in catalog.peaks_of(ids.tolist()).items():
        np.testing.assert_array_equal(peaks.time_frames, singles[t].time_frames)


def test_a_chunks_candidate_peaks_come_in_one_query_on_either_database(
    tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, counted where the catalog sends its reads (SQLite or a real PostgreSQL)."""
    catalog = Catalog(tmp_path / "data", database_url=database_url)
    _add(catalog, _songs(tmp_path, [7, 8, 9]))
    ids = catalog.live_ids()
    read = catalog._store._read
    statements: list[str] = []

    def counted(sql: str, params: Any) -> Any:
        statements.append(sql)
        return read(sql, params)

    monkeypatch.setattr(catalog._store, "_read", counted)
    rng = np.random.default_rng(1)
    catalog.pair_postings(ids, rng.integers(0, 1 << 23, 500).astype(np.uint32), DEFAULT.fingerprint)
    assert len(statements) == 1 and "FROM peaks" in statements[0], statements  # all three
    catalog.close()


def test_the_migrations_build_the_declared_schema(tmp_path: Path, database_url: str | None) -> None:
    data = tmp_path / "data"
    Catalog(data, database_url=database_url).close()
    url = database_url or f"sqlite:///{data / 'catalog.sqlite'}"
    engine = create_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(context(conn), metadata) == []
    engine.dispose()
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


def context(conn: Connection) -> MigrationContext:
    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})


def test_a_data_dir_written_before_the_migrations_upgrades_in_place(tmp_path: Path) -> None:
    """tests/data/catalog-v0 was written by songscan at ed70a38 (tracks, peaks and their
    trigger, the format in SQLite's user_version): opened now, it is migrated and scans."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    catalog = Catalog(data)
    assert [(t.audio_id, t.metadata.title) for t in catalog.tracks()] == [
        (1, "Song 1"),
        (2, "Song 2"),
    ]
    with sqlite3.connect(data / "catalog.sqlite") as db:
        assert db.execute("SELECT format FROM catalog_state").fetchone()[0] == FORMAT
        assert db.execute("SELECT version_num FROM catalog_alembic_version").fetchone()[0] == HEAD
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []
    clip = write_audio(tmp_path / "clip.flac", excerpt(synth_song(42, 12.0), 2.0, 8.0))
    (best, *_) = recognize_clip(clip, data, DEFAULT)
    assert best.track.audio_id == 2
    catalog.remove(1)  # the peaks go with the track, without the old trigger
    with sqlite3.connect(data / "catalog.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM peaks").fetchone()[0] == 1
    catalog.close()


def test_songscan_keeps_its_catalog_in_the_database_the_settings_name(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """SONGSCAN_DATABASE_URL moves the catalog too: `add` writes its tracks there (not into
    the data dir's SQLite), and `scan`'s pool workers read them from there."""
    from .test_cli import run

    url = postgres_server.create_database()
    env = {"SONGSCAN_DATABASE_URL": url}
    data = tmp_path / "data"
    songs = [write_audio(tmp_path / f"t{s}.flac", synth_song(s, 40.0)) for s in (31, 32)]
    added = run("--data", data, "add", *songs, env=env)
    assert added.returncode == 0, added.stderr
    assert not (data / "catalog.sqlite").exists()
    catalog = Catalog(data, database_url=url)
    assert sorted(t.audio_id for t in catalog.tracks()) == [1, 2]
    catalog.close()
    show = write_audio(
        tmp_path / "show.flac",
        np.concatenate([excerpt(synth_song(32, 40.0), 2.0, 36.0)] * 10),  # 6 min: a pool's work
    )
    scanned = run("--data", data, "scan", "--workers", "2", show, env=env)
    assert scanned.returncode == 0, scanned.stderr
    found = {s["audio_id"] for c in json.loads(scanned.stdout)["result"] for s in c["songs"]}
    assert found == {2}
    # Without the setting, the same data dir has its own (empty) SQLite catalog.
    listed = run("--data", data, "catalog", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_a_data_dir_moves_its_catalog_onto_postgresql(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    from .test_cli import assert_clean_error, run

    data = tmp_path / "data"
    songs = [write_audio(tmp_path / f"t{s}.flac", synth_song(s, 30.0)) for s in (33, 34)]
    assert run("--data", data, "add", *songs).returncode == 0
    url = postgres_server.create_database()
    copied = run("--data", data, "catalog", "copy", "--to", url)
    assert copied.returncode == 0, copied.stderr
    assert json.loads(copied.stdout) == {"tracks": 2}
    env = {"SONGSCAN_DATABASE_URL": url}
    before = json.loads(run("--data", data, "catalog", "list", "--json").stdout)
    after = json.loads(run("--data", data, "catalog", "list", "--json", env=env).stdout)
    assert after == before and len(after) == 2
    clip = write_audio(tmp_path / "clip.flac", excerpt(synth_song(34, 30.0), 5.0, 10.0))
    found = run("--data", data, "recognize", clip, env=env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["result"]["audio_id"] == 2
    # New tracks get ids after the copied ones (the index's postings name tracks by id).
    third = write_audio(tmp_path / "t35.flac", synth_song(35, 30.0))
    assert run("--data", data, "add", third, env=env).returncode == 0
    copied_ids = {t.id for t in Catalog(data).tracks()}
    catalog = Catalog(data, database_url=url)
    new_id = catalog.get(3).id
    assert {t.id for t in catalog.tracks()} == copied_ids | {new_id}
    assert new_id > max(copied_ids)
    catalog.close()
    assert_clean_error(run("--data", data, "catalog", "copy", "--to", url))  # not empty now
