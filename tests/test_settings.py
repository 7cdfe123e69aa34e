"""The settings (`songscan.toml` and the environment): a broken or wrong config ends a command
in one line, never a traceback; the backends' keys and variables, and which wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from songscan import settings
from songscan.errors import ConfigError, SongscanError


def songscan(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`songscan --data DATA ARGS…`, with no SONGSCAN_ variable but those of `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SONGSCAN_")}
    return subprocess.run(
        [sys.executable, "-m", "songscan.cli", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
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


# -- the backends: [backends] keys and SONGSCAN_*_URL ------------------------------------------
def _settings(tmp_path: Path, toml: str = "", **env: str) -> settings.Settings:
    (tmp_path / "songscan.toml").write_text(toml)
    return settings.load(tmp_path, environ=env)


def test_without_backends_everything_is_embedded(tmp_path: Path) -> None:
    loaded = _settings(tmp_path)
    assert loaded.database_url == f"sqlite:///{tmp_path.resolve() / 'accounts.db'}"
    assert loaded.index_url is None and loaded.broker_url is None
    assert loaded.data_dir == tmp_path.resolve()


def test_the_database_from_the_file_or_the_environment_which_wins(tmp_path: Path) -> None:
    in_file = f"sqlite:///{tmp_path / 'file.db'}"
    in_env = "postgresql+psycopg://songscan@db.example/songscan"
    toml = f'[backends]\ndatabase_url = "{in_file}"\n'
    assert _settings(tmp_path, toml).database_url == in_file
    assert _settings(tmp_path, SONGSCAN_DATABASE_URL=in_env).database_url == in_env
    assert _settings(tmp_path, toml, SONGSCAN_DATABASE_URL=in_env).database_url == in_env
    older = f'[accounts]\ndatabase_url = "{in_file}"\n'  # the key's older place
    assert _settings(tmp_path, older).database_url == in_file
    both = f'{toml}[accounts]\ndatabase_url = "sqlite:///elsewhere.db"\n'
    assert _settings(tmp_path, both).database_url == in_file


def test_the_broker_url_names_a_redis_for_celery_workers(tmp_path: Path) -> None:
    good = "redis://10.0.0.3:6379/0"
    assert _settings(tmp_path, f'[backends]\nbroker_url = "{good}"\n').broker_url == good
    with pytest.raises(ConfigError) as from_env:  # the environment wins over the file
        _settings(tmp_path, f'[backends]\nbroker_url = "{good}"\n', SONGSCAN_BROKER_URL="bogus://x")
    assert from_env.value.message.startswith("SONGSCAN_BROKER_URL: unknown ")
    assert "'bogus'" in from_env.value.message
    for bad in ("redis://host-without-port", "redis://h:6379", "redis://h:99999/0"):
        with pytest.raises(ConfigError, match="expected redis://HOST:PORT/N"):
            _settings(tmp_path, SONGSCAN_BROKER_URL=bad)
    assert _settings(tmp_path, SONGSCAN_BROKER_URL="  ").broker_url is None  # empty is unset


def test_an_api_node_with_a_broker_needs_its_url_and_a_media_secret(tmp_path: Path) -> None:
    broker = {"SONGSCAN_BROKER_URL": "redis://10.0.0.3:6379/0"}
    assert _settings(tmp_path).remote_scans() is None  # no broker: this host's pool
    with pytest.raises(ConfigError) as missing:
        _settings(tmp_path, **broker).remote_scans()
    assert "SONGSCAN_NODE_URL" in missing.value.message
    assert "SONGSCAN_MEDIA_SECRET" in missing.value.message
    secret = "k" * 32
    toml = (
        f'[backends]\nnode_url = "http://10.0.0.5:8000/"\nmedia_secret = "{secret}"\n'
        "[workers]\nvisibility_timeout_s = 120\nscan_timeout_s = 600\n"
    )
    remote = _settings(tmp_path, toml, **broker).remote_scans()
    assert remote is not None
    assert (remote.node_url, remote.media_secret) == ("http://10.0.0.5:8000", secret)
    assert (remote.visibility_timeout_s, remote.scan_timeout_s) == (120.0, 600.0)
    assert secret not in repr(remote)
    with pytest.raises(ConfigError, match="at least 32 characters"):
        _settings(tmp_path, SONGSCAN_MEDIA_SECRET="short")
    for bad in ("10.0.0.5:8000", "ftp://h/", "http://h:8000/?x=1"):
        with pytest.raises(ConfigError, match="base URL"):
            _settings(tmp_path, SONGSCAN_NODE_URL=bad)
    for section in ("[workers]\nscan_timeout_s = 0\n", "[workers]\nretries = 3\n"):
        with pytest.raises(ConfigError, match=r"\[workers\]"):
            _settings(tmp_path, section)


def test_the_index_url_names_a_redis_cluster(tmp_path: Path) -> None:
    good = "redis-cluster://10.0.0.1:7000,10.0.0.2:7001?prefix=songscan"
    assert _settings(tmp_path, f'[backends]\nindex_url = "{good}"\n').index_url == good
    other = "redis-cluster://10.0.0.9:7000"
    from_env = _settings(tmp_path, f'[backends]\nindex_url = "{good}"\n', SONGSCAN_INDEX_URL=other)
    assert from_env.index_url == other  # the environment wins over the file
    for bad, says in (
        ("redis-cluster://host-without-port", "expected"),
        ("redis-cluster://10.0.0.1:7000?replicas=2", "unknown or invalid option"),
        ("bogus://x", "unknown index scheme"),
    ):
        with pytest.raises(ConfigError, match=says) as raised:
            _settings(tmp_path, SONGSCAN_INDEX_URL=bad)
        assert raised.value.message.startswith("SONGSCAN_INDEX_URL: ")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[backends]\nqueue_url = 'x'\n", "[backends]: unknown key 'queue_url'"),
        ("[backends]\ndatabase_url = 5\n", "[backends].database_url: expected a URL"),
        ("backends = 'sqlite://'\n", "[backends]: expected a table"),
    ],
)
def test_a_bad_backends_section(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _settings(tmp_path, toml)
    assert raised.value.message.startswith(message)


def test_a_database_url_of_another_kind_is_refused_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        _settings(tmp_path, SONGSCAN_DATABASE_URL="mysql://songscan:s3cret@db/songscan")
    assert raised.value.message.startswith("SONGSCAN_DATABASE_URL: not a database URL")
    assert "'mysql'" in raised.value.message
    assert "s3cret" not in raised.value.message


def test_the_ingest_batch_size_is_read_with_the_settings(tmp_path: Path) -> None:
    assert _settings(tmp_path).ingest_batch_postings == settings.INGEST_BATCH_POSTINGS
    assert _settings(tmp_path, SONGSCAN_INGEST_BATCH_POSTINGS="7").ingest_batch_postings == 7
    with pytest.raises(ConfigError, match="SONGSCAN_INGEST_BATCH_POSTINGS: expected a positive"):
        _settings(tmp_path, SONGSCAN_INGEST_BATCH_POSTINGS="0")


def test_the_database_setting_is_the_one_the_commands_use(tmp_path: Path) -> None:
    """`[backends] database_url` takes the accounts elsewhere; $SONGSCAN_DATABASE_URL wins."""
    data = tmp_path / "data"
    data.mkdir()
    in_file, in_env = tmp_path / "from-file.db", tmp_path / "from-env.db"
    (data / "songscan.toml").write_text(f'[backends]\ndatabase_url = "sqlite:///{in_file}"\n')
    made = songscan(data, "accounts", "create", "--email", "file@example.org")
    assert made.returncode == 0, made.stderr
    assert in_file.exists() and not (data / "accounts.db").exists()
    env = {"SONGSCAN_DATABASE_URL": f"sqlite:///{in_env}"}
    made = songscan(data, "accounts", "create", "--email", "env@example.org", env=env)
    assert made.returncode == 0, made.stderr
    listed = songscan(data, "accounts", "list", env=env).stdout
    assert "env@example.org" in listed and "file@example.org" not in listed
    assert "file@example.org" in songscan(data, "accounts", "list").stdout


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SONGSCAN_DATABASE_URL", "mysql://db/songscan", "SONGSCAN_DATABASE_URL: not a database"),
        ("SONGSCAN_INDEX_URL", "redis://h:1/0", "SONGSCAN_INDEX_URL: unknown index scheme"),
        ("SONGSCAN_BROKER_URL", "amqp://h:5672//", "SONGSCAN_BROKER_URL: unknown broker scheme"),
        ("SONGSCAN_INDEX_URL", "redis-cluster://h:7000?x=1", "SONGSCAN_INDEX_URL: index URL: "),
    ],
)
@pytest.mark.parametrize(
    "command",
    [("serve", "--port", "0", "--workers", "2"), ("scan", "clip.wav"), ("accounts", "list")],
)
def test_a_bad_backend_ends_every_command_in_the_same_one_line(
    tmp_path: Path, variable: str, value: str, message: str, command: tuple[str, ...]
) -> None:
    (tmp_path / "clip.wav").write_bytes(b"RIFF")  # never read: the settings come first
    args = [str(tmp_path / a) if a == "clip.wav" else a for a in command]
    proc = songscan(tmp_path, *args, env={variable: value})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error (100): {message}"), proc.stderr
