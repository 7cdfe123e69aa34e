"""The `songscan` command, run as a real subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from songscan.catalog import Catalog
from songscan.config import DEFAULT
from songscan.fingerprint import reference_peaks
from songscan.index import unpack_postings
from songscan.media import decode_all
from tests.audio import synth_song, write_audio

from .conftest import excerpt, mix, set_format

CFG = DEFAULT.fingerprint

SONGSCAN = [sys.executable, "-m", "songscan.cli"]


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SONGSCAN, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1
    assert proc.stdout == ""


def test_add_scan_and_catalog_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    song = write_audio(tmp_path / "track.flac", synth_song(21, 40.0))
    added = run(
        "--data",
        data,
        "add",
        song,
        "--audio-id",
        "7",
        "--title",
        "=cmd|calc",
        "--artist",
        'Band, "The"',
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added 7\t")
    listing = json.loads(run("--data", data, "catalog", "list", "--json").stdout)
    assert [(t["audio_id"], t["title"]) for t in listing] == [(7, "=cmd|calc")]
    stats = json.loads(run("--data", data, "catalog", "stats").stdout)
    assert stats["tracks"] == 1 and stats["postings"] > 0 and stats["index_bytes"] > 0

    show = write_audio(
        tmp_path / "show.mp3", mix([(3.0, excerpt(synth_song(21, 40.0), 5.0, 30.0))], 36.0)
    )
    scanned = run("--data", data, "scan", show, "--accurate-offsets")
    assert scanned.returncode == 0, scanned.stderr
    body = json.loads(scanned.stdout)
    assert body["status"] == "success"
    assert [r["offset"] for r in body["result"]] == ["00:00", "00:12", "00:24"]
    first = body["result"][0]["songs"][0]
    assert first["audio_id"] == 7 and abs(first["start_offset"] - 3000) <= 500

    as_csv = run("--data", data, "scan", show, "--format", "csv")
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0][:4] == ["offset", "offset_seconds", "artist", "title"]
    assert len(rows) == 4
    assert rows[1][2] == 'Band, "The"'  # quoted per RFC 4180, read back intact
    assert rows[1][3] == "'=cmd|calc"  # neutralised against formula injection

    segments = json.loads(run("--data", data, "scan", show, "--format", "segments").stdout)
    [segment] = segments["result"]
    assert segment["audio_id"] == 7 and segment["chunks"] == 3
    assert abs(segment["start"] - 3.0) <= 0.5 and abs(segment["end"] - 33.0) <= 0.5
    assert abs(segment["timecode_ms"] - 5000) <= 500

    recognised = json.loads(run("--data", data, "recognize", show).stdout)
    assert recognised["result"]["title"] == "=cmd|calc"

    removed = run("--data", data, "catalog", "remove", "7")
    assert removed.returncode == 0
    assert json.loads(run("--data", data, "scan", show).stdout)["result"] == []


@pytest.mark.parametrize(
    "make, args",
    [
        ("text", ["scan", "{f}"]),
        ("empty", ["scan", "{f}"]),
        ("missing", ["scan", "{f}"]),
        ("stub", ["recognize", "{f}"]),
        ("text", ["add", "{f}"]),
        ("good", ["scan", "{f}", "--every", "0"]),
        ("good", ["scan", "{f}", "--skip", "-1"]),
        ("good", ["scan", "{f}", "--limit", "abc"]),
        ("good", ["scan", "{f}", "--format", "xml"]),
        ("good", ["add", "{f}", "{f}", "--audio-id", "3"]),
    ],
)
def test_bad_input_ends_in_one_line_and_non_zero_exit(
    tmp_path: Path, make: str, args: list[str]
) -> None:
    f = tmp_path / "input.mp3"
    if make == "text":
        f.write_text("hello, this is text\n" * 20)
    elif make == "empty":
        f.touch()
    elif make == "stub":
        full = write_audio(tmp_path / "full.flac", synth_song(2, 5.0))
        f.write_bytes(full.read_bytes()[:300])
    elif make == "good":
        write_audio(f, synth_song(3, 15.0))
    proc = run("--data", tmp_path / "data", *[a.format(f=f) for a in args])
    assert_clean_error(proc)


@pytest.mark.parametrize(
    "args", [["catalog", "stats"], ["catalog", "list"], ["catalog", "compact"], ["scan", "{f}"]]
)
def test_a_data_dir_of_another_format_ends_in_one_line(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "data"
    f = write_audio(tmp_path / "clip.flac", synth_song(3, 15.0))
    assert run("--data", data, "add", f).returncode == 0
    set_format(data, 2)
    proc = run("--data", data, *[a.format(f=f) for a in args])
    assert_clean_error(proc)
    assert "format 2" in proc.stderr


def test_reindex_upgrades_a_data_dir_of_the_previous_format(tmp_path: Path) -> None:
    data = tmp_path / "data"
    song = write_audio(tmp_path / "track.flac", synth_song(21, 40.0))
    assert run("--data", data, "add", song, "--audio-id", "7").returncode == 0
    catalog = Catalog(data)
    hashes, postings = catalog.index.every_posting()
    catalog.index.rebuild([(hashes >> 4, postings)])  # stands in for the older hashes
    catalog.close()
    set_format(data, 2)
    show = write_audio(tmp_path / "show.flac", excerpt(synth_song(21, 40.0), 5.0, 30.0))
    assert_clean_error(run("--data", data, "scan", show))
    upgraded = run("--data", data, "catalog", "reindex")
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout)["tracks"] == 1
    scanned = run("--data", data, "scan", show)
    assert scanned.returncode == 0, scanned.stderr
    assert json.loads(scanned.stdout)["result"][0]["songs"][0]["audio_id"] == 7


def test_errors_name_what_was_wrong_in_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    proc = run("--data", a_file, "catalog", "stats")
    assert_clean_error(proc)
    assert f"cannot use {a_file} as the data directory" in proc.stderr
    # A name that looks like console markup is printed as it is.
    proc = run("--data", tmp_path / "data", "recognize", tmp_path / "[bold]clip.mp3")
    assert_clean_error(proc)
    assert "no such file: [bold]clip.mp3" in proc.stderr
    proc = run("--data", tmp_path / "data", "scan", tmp_path)
    assert_clean_error(proc)
    assert f"not a file: {tmp_path.name}" in proc.stderr


def test_kill_9_during_ingest_leaves_each_track_whole_or_absent(tmp_path: Path) -> None:
    folder = tmp_path / "tracks"
    folder.mkdir()
    for i in range(24):
        write_audio(folder / f"t{i:02d}.flac", synth_song(100 + i, 20.0))
    data = tmp_path / "data"
    env = {**os.environ, "SONGSCAN_INGEST_BATCH_POSTINGS": "1"}  # one segment per track
    proc = subprocess.Popen(
        [*SONGSCAN, "--data", str(data), "add", str(folder), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if _ready_tracks(data) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    catalog = Catalog(data)
    tracks = catalog.tracks()
    assert 3 <= len(tracks) < 24  # the kill landed mid-ingest
    _, postings = catalog.index.every_posting()
    ids, _ = unpack_postings(postings)
    for track in tracks:  # every visible track has every one of its postings, and its peaks
        assert int((ids == track.id).sum()) == track.hash_count > 0
        assert track.source is not None
        expected = reference_peaks(decode_all(track.source, CFG.sample_rate_hz), CFG)
        assert len(catalog.peaks(track.id)) == len(expected)
    # A fresh writer cleans up and carries on; the catalog then holds every file.
    again = run("--data", data, "add", folder, env={"SONGSCAN_INGEST_BATCH_POSTINGS": "1"})
    assert again.returncode == 0, again.stderr
    catalog = Catalog(data)
    sources = [t.source for t in catalog.tracks()]
    assert {Path(s).name for s in sources} == {f"t{i:02d}.flac" for i in range(24)}
    catalog.compact()
    _, postings = catalog.index.every_posting()
    ids, _ = unpack_postings(postings)
    assert set(ids.tolist()) == {t.id for t in catalog.tracks()}


def _ready_tracks(data: Path) -> int:
    try:
        db = sqlite3.connect(data / "catalog.sqlite", timeout=1)
        try:
            return int(
                db.execute("SELECT COUNT(*) FROM tracks WHERE state = 'ready'").fetchone()[0]
            )
        finally:
            db.close()
    except sqlite3.Error:
        return 0


# -- start-up: what a command imports -------------------------------------------------------------
HEAVY = ("sqlalchemy", "fastapi", "scipy", "alembic", "argon2", "songscan.accounts", "songscan.api")


def imported(*args: str | Path) -> set[str]:
    """The modules a fresh `songscan ARGS` process imports (Python's -X importtime report),
    started as the `songscan` entry point starts it."""
    entry = "import sys; sys.argv[0] = 'songscan'; from songscan.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", entry, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines}


def _heavy(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in prefixes or m.startswith(prefixes))


@pytest.mark.parametrize("args", [["--help"], ["scan", "--help"], ["accounts", "--help"]])
def test_help_imports_neither_the_engine_nor_the_server(args: list[str]) -> None:
    modules = imported(*args)
    assert "songscan.cli" in modules  # the report is read right
    assert _heavy(modules, (*HEAVY, "numpy", "av", "rich")) == []


def test_a_scan_imports_neither_scipy_nor_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    song = write_audio(tmp_path / "track.flac", synth_song(21, 20.0))
    assert run("--data", data, "add", song).returncode == 0
    modules = imported("--data", data, "scan", song)
    assert "songscan.scan" in modules
    assert _heavy(modules, HEAVY) == []  # SciPy's FFT is loaded without scipy.fft


# -- usage errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, says",
    [
        (["scan", "--limit", "abc", "x.mp3"], "Invalid value for '--limit'"),
        (["scan", "--bogus", "x.mp3"], "No such option: --bogus"),
        (["catalog", "remove"], "Missing argument"),
        (["catalog", "remove", "seven"], "Invalid value"),
        (["accounts", "show"], "Missing argument"),
        (["accounts", "credit", "1", "abc"], "Invalid value"),
        (["accounts", "list", "--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_errors_end_in_the_one_line_format(
    tmp_path: Path, args: list[str], says: str
) -> None:
    proc = run("--data", tmp_path / "data", *args)
    assert proc.returncode == 2  # as for every other bad parameter
    assert_clean_error(proc)
    [line] = proc.stderr.splitlines()
    assert line.startswith("error (50): ") and says in line


def test_no_command_prints_the_help(tmp_path: Path) -> None:
    proc = run()
    assert proc.returncode == 2 and "Usage: " in proc.stderr
    assert "Commands:" in proc.stderr and "Traceback" not in proc.stderr


# -- catalog identity --------------------------------------------------------------------------
def test_add_refuses_audio_already_in_the_catalog_whatever_its_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = write_audio(tmp_path / "first.flac", synth_song(21, 40.0))
    same = write_audio(tmp_path / "renamed.mp3", synth_song(21, 40.0))  # re-encoded too
    other = write_audio(tmp_path / "other.flac", synth_song(22, 40.0))
    added = run("--data", data, "add", first, "--artist", "Band", "--title", "Song")
    assert added.returncode == 0, added.stderr

    refused = run("--data", data, "add", same)
    assert refused.returncode == 2
    assert_clean_error(refused)
    [line] = refused.stderr.splitlines()
    assert line.startswith("error (50): ")
    assert 'renamed.mp3 is already in the catalog as track 1 "Band – Song"' in line

    accepted = run("--data", data, "add", other)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.startswith("added 2\t")

    replaced = run("--data", data, "add", same, "--replace", "--title", "Song (remaster)")
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.startswith("added 1\t")
    listing = json.loads(run("--data", data, "catalog", "list", "--json").stdout)
    assert sorted((t["audio_id"], t["title"]) for t in listing) == [
        (1, "Song (remaster)"),
        (2, "other"),
    ]
    again = run("--data", data, "add", same, "--allow-duplicate")
    assert again.returncode == 0 and again.stdout.startswith("added 3\t")


def test_tracks_are_named_by_owner_and_audio_id(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shared = write_audio(tmp_path / "shared.flac", synth_song(21, 40.0))
    upload = write_audio(tmp_path / "upload.flac", synth_song(22, 40.0))
    assert run("--data", data, "add", shared).stdout.startswith("added 1\t")
    assert run("--data", data, "add", upload, "--owner", "5").stdout.startswith("added 1\t")
    listing = run("--data", data, "catalog", "list").stdout
    assert "shared" in listing and " 5 " in listing

    show = write_audio(tmp_path / "show.flac", excerpt(synth_song(22, 40.0), 5.0, 30.0))
    # The shared catalog unless told otherwise: account 5's upload is not heard ...
    assert json.loads(run("--data", data, "scan", show).stdout)["result"] == []
    assert json.loads(run("--data", data, "recognize", show).stdout)["result"] is None
    # ... but is with --owner 5 (with the shared catalog, as that account's queries match).
    body = json.loads(run("--data", data, "scan", show, "--owner", "5").stdout)
    assert body["result"][0]["songs"][0]["title"] == "upload"
    clip = json.loads(run("--data", data, "recognize", show, "--owner", "5").stdout)
    assert clip["result"]["title"] == "upload"

    removed = run("--data", data, "catalog", "remove", "1", "--owner", "5")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.rstrip("\n").split("\t") == ["removed 1", "5", "upload"]
    left = json.loads(run("--data", data, "catalog", "list", "--json").stdout)
    assert [(t["owner"], t["title"]) for t in left] == [("", "shared")]
    gone = run("--data", data, "catalog", "remove", "1", "--owner", "5")
    assert_clean_error(gone)
    assert "no track with audio_id 1 in account 5's uploads" in gone.stderr
    assert_clean_error(run("--data", data, "scan", show, "--owner", "five"))
    removed = run("--data", data, "catalog", "remove", "1")
    assert removed.stdout.rstrip("\n").split("\t") == ["removed 1", "shared", "shared"]
