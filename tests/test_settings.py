"""`songscan.toml`: a broken or wrong config ends a command in one line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from songscan import settings
from songscan.errors import ConfigError, SongscanError


def songscan(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONGSCAN_")}
    return subprocess.run(
        [sys.executable, "-m", "songscan.cli", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("not toml [[[\n", "is not valid TOML"),
        ("[accounts]\nbogus = 1\n", "[accounts]: unknown key 'bogus'"),
        ('[plans.trial]\nmonthly_requests = "many"\n', "[plans.trial].monthly_requests"),
    ],
)
def test_a_bad_config_file_ends_in_one_line(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "songscan.toml").write_text(toml)
    proc = songscan(tmp_path, "accounts", "list")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error (100): ")
    assert message in lines[0]


def test_config_errors_are_songscan_errors(tmp_path: Path) -> None:
    (tmp_path / "songscan.toml").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ConfigError) as raised:
        settings.load_config(tmp_path)
    assert isinstance(raised.value, SongscanError)
    assert raised.value.code == 100
    assert str(tmp_path / "songscan.toml") in raised.value.message


@pytest.mark.parametrize(
    "toml",
    ["[api]\nbogus = 1\n", '[media]\nmin_sample_rate_hz = "low"\n', "[log]\nbogus = 1\n"],
)
def test_serve_refuses_a_bad_config_in_one_line_before_it_listens(
    tmp_path: Path, toml: str
) -> None:
    (tmp_path / "songscan.toml").write_text(toml)
    proc = songscan(tmp_path, "serve", "--port", "0", "--workers", "2")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error (100): [")
