"""songscan's settings: where its data is, the config file, and which backend does what.

Read once, by `load()`, from the environment and `songscan.toml`, into one `Settings`; every
other module is handed the values it needs (pool workers by their parent), none reads the
environment itself.

Data directory: `--data DIR`, else `$SONGSCAN_DATA`, else the per-user data dir.
Config file: `$SONGSCAN_CONFIG`, else `songscan.toml` inside the data directory (optional).

The backends (README, "Settings"), each an environment variable or the same key of the file's
`[backends]` section, the environment winning:

- `SONGSCAN_DATABASE_URL` / `database_url`: the accounts' database; SQLite in the data
  directory unless it names another (`postgresql+psycopg://…`). `[accounts] database_url`,
  its older spelling, is still read after both.
- `SONGSCAN_INDEX_URL` / `index_url`: the fingerprint index; unset, the segment files in the
  data directory. `redis-cluster://HOST:PORT,…` is reserved for the Redis Cluster index.
- `SONGSCAN_BROKER_URL` / `broker_url`: where enterprise scans run; unset, this host's
  process pool; `redis://HOST:PORT/N` (a standalone Redis): Celery workers
  (`songscan worker`, docs/scale-out.md "Workers").
- `SONGSCAN_NODE_URL` / `node_url`: with a broker, this API node's base URL as its workers
  reach it (they fetch a scan's media from it).
- `SONGSCAN_MEDIA_SECRET` / `media_secret`: with a broker, the secret (at least 32
  characters) that signs those fetches; the same on every process of one API node.

`[workers]` in songscan.toml: `visibility_timeout_s` (a run taken by a worker that died is
delivered again after this long; 900) and `scan_timeout_s` (a scan whose runs are not all back
by then fails; 3600).
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from .config import RemoteScans
from .errors import ConfigError, SongscanError

DATA_ENV = "SONGSCAN_DATA"
CONFIG_ENV = "SONGSCAN_CONFIG"
CONFIG_FILE = "songscan.toml"
BACKENDS = "backends"  # the section of songscan.toml naming the backends
# A backend's key in [backends] and its environment variable.
BACKEND_KEYS = {
    "database_url": "SONGSCAN_DATABASE_URL",
    "index_url": "SONGSCAN_INDEX_URL",
    "broker_url": "SONGSCAN_BROKER_URL",
    "node_url": "SONGSCAN_NODE_URL",
    "media_secret": "SONGSCAN_MEDIA_SECRET",
}
WORKERS = "workers"  # the section of songscan.toml with the Celery knobs
MIN_SECRET_CHARS = 32
# Postings an ingest collects before it writes a segment (a knob for tests and benchmarks).
INGEST_BATCH_ENV = "SONGSCAN_INGEST_BATCH_POSTINGS"
INGEST_BATCH_POSTINGS = 2_000_000
ACCOUNTS_DB_FILE = "accounts.db"  # the default database, in the data directory

_DATABASE_SCHEME = re.compile(r"(sqlite|postgresql)(\+\w+)?")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


@dataclass(frozen=True)
class Settings:
    """Everything songscan is configured with, as one process saw it at start-up."""

    data_dir: Path
    config: Mapping[str, Any]  # the parsed songscan.toml ({} without one)
    database_url: str
    index_url: str | None = None  # None: the segment files in the data directory
    # The catalog's database: the database URL when the environment or [backends] names one
    # (None: catalog.sqlite in the data directory; an [accounts] URL moves the accounts alone).
    catalog_url: str | None = None
    broker_url: str | None = None  # None: this host's process pool
    node_url: str | None = None  # with a broker: this API node's URL, as its workers reach it
    media_secret: str | None = field(default=None, repr=False)
    visibility_timeout_s: float = RemoteScans.visibility_timeout_s
    scan_timeout_s: float = RemoteScans.scan_timeout_s
    ingest_batch_postings: int = INGEST_BATCH_POSTINGS

    def remote_scans(self) -> RemoteScans | None:
        """Where an API node runs its enterprise scans: None on this host; with a broker, on
        Celery workers, which needs `node_url` and `media_secret` (ConfigError without)."""
        if self.broker_url is None:
            return None
        needed = {"node_url": self.node_url, "media_secret": self.media_secret}
        missing = [key for key, value in needed.items() if not value]
        if missing:
            names = " and ".join(f"{BACKEND_KEYS[key]} ([{BACKENDS}] {key})" for key in missing)
            raise ConfigError(
                f"a broker is set: an API node also needs {names}; its workers fetch each "
                "scan's media from it"
            )
        assert self.node_url is not None and self.media_secret is not None
        return RemoteScans(
            self.broker_url,
            self.node_url,
            self.media_secret,
            self.visibility_timeout_s,
            self.scan_timeout_s,
        )


def load(
    explicit_data_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The settings of the data directory (`explicit_data_dir`, else `$SONGSCAN_DATA`, else
    the user's): its config file and the environment (`os.environ` unless given)."""
    env = os.environ if environ is None else environ
    data = data_dir(explicit_data_dir, env)
    return from_config(data, load_config(data, env), env)


def from_config(
    data: Path, config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings of a data directory with an already parsed config; ConfigError for a
    `[backends]` section or a backend URL songscan cannot use."""
    env = os.environ if environ is None else environ
    chosen = _backend_urls(config, env)
    catalog_url = _database_url(*chosen["database_url"]) if "database_url" in chosen else None
    older = config.get("accounts", {}).get("database_url")  # [accounts]' checks its type
    if "database_url" not in chosen and isinstance(older, str) and older.strip():
        chosen["database_url"] = ("[accounts].database_url", older.strip())
    return Settings(
        data_dir=data,
        config=config,
        database_url=catalog_url
        or (
            _database_url(*chosen["database_url"]) if "database_url" in chosen else sqlite_url(data)
        ),
        index_url=_index_url(*chosen["index_url"]) if "index_url" in chosen else None,
        catalog_url=catalog_url,
        broker_url=_broker_url(*chosen["broker_url"]) if "broker_url" in chosen else None,
        node_url=_node_url(*chosen["node_url"]) if "node_url" in chosen else None,
        media_secret=_secret(*chosen["media_secret"]) if "media_secret" in chosen else None,
        **_worker_knobs(config),
        ingest_batch_postings=_positive_int(env, INGEST_BATCH_ENV, INGEST_BATCH_POSTINGS),
    )


def data_dir(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The data directory, created if missing."""
    env = os.environ if environ is None else environ
    chosen = explicit or env.get(DATA_ENV) or platformdirs.user_data_dir("songscan")
    path = Path(chosen).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unusable_data_dir(path, exc) from None
    return path


def unusable_data_dir(path: Path, exc: OSError) -> SongscanError:
    return SongscanError(f"cannot use {path} as the data directory: {exc.strerror}")


def load_config(data: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The parsed config file, or an empty dict when there is none."""
    env = os.environ if environ is None else environ
    path = Path(env.get(CONFIG_ENV) or data / CONFIG_FILE)
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def sqlite_url(data: Path) -> str:
    """The default database: SQLite in the data directory."""
    return f"sqlite:///{data / ACCOUNTS_DB_FILE}"


# -- the backends ---------------------------------------------------------------------------
def _backend_urls(config: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Each backend that is set: (where it was set, its URL); the environment wins."""
    section = config.get(BACKENDS, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"[{BACKENDS}]: expected a table of {', '.join(BACKEND_KEYS)}")
    for key, value in section.items():
        if key not in BACKEND_KEYS:
            known = ", ".join(BACKEND_KEYS)
            raise ConfigError(f"[{BACKENDS}]: unknown key {key!r} (known: {known})")
        if not isinstance(value, str):
            raise ConfigError(f"[{BACKENDS}].{key}: expected a URL (a string), got {value!r}")
    chosen: dict[str, tuple[str, str]] = {}
    for key, variable in BACKEND_KEYS.items():
        if env.get(variable, "").strip():
            chosen[key] = (variable, env[variable].strip())
        elif section.get(key, "").strip():
            chosen[key] = (f"[{BACKENDS}].{key}", section[key].strip())
    return chosen


def _scheme(url: str) -> str:
    """The URL's scheme, lower-cased ("" when it has none). Only the scheme is ever shown in
    an error: the rest of a URL may hold a password."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def _database_url(source: str, url: str) -> str:
    if not _DATABASE_SCHEME.fullmatch(_scheme(url)):
        raise ConfigError(
            f"{source}: not a database URL songscan can use (scheme {_scheme(url)!r}); "
            "expected sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DATABASE"
        )
    return url


def _index_url(source: str, url: str) -> str:
    if _scheme(url) != "redis-cluster":
        raise ConfigError(
            f"{source}: unknown index scheme {_scheme(url)!r}; leave it unset for the index "
            "files in the data directory (redis-cluster://HOST:PORT,… is reserved)"
        )
    nodes = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
    if not nodes or not all(_is_host_port(node) for node in nodes.split(",")):
        raise ConfigError(f"{source}: expected redis-cluster://HOST:PORT[,HOST:PORT…]")
    from .index.backends import parse_redis_cluster_url  # numpy: only when one is named

    try:
        parse_redis_cluster_url(url)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return url


def _broker_url(source: str, url: str) -> str:
    if _scheme(url) not in ("redis", "rediss"):
        raise ConfigError(
            f"{source}: unknown broker scheme {_scheme(url)!r}; expected redis://HOST:PORT/N "
            "(Celery workers), or leave it unset for this host's process pool"
        )
    parts = urllib.parse.urlsplit(url)
    database = parts.path.strip("/")
    try:
        valid = bool(parts.hostname) and parts.port is not None and database.isdigit()
    except ValueError:  # a port that is not a number, or out of range
        valid = False
    if not valid:
        raise ConfigError(f"{source}: expected redis://HOST:PORT/N (N: the database number)")
    return url


def _node_url(source: str, url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid or parts.query or parts.fragment:
        raise ConfigError(f"{source}: expected this node's base URL, http(s)://HOST:PORT")
    return url.rstrip("/")


def _secret(source: str, secret: str) -> str:
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"{source}: expected at least {MIN_SECRET_CHARS} characters "
            "(`openssl rand -hex 32` makes one)"
        )
    return secret


def _worker_knobs(config: Mapping[str, Any]) -> dict[str, float]:
    """`[workers]`'s timeouts (positive seconds), by their Settings field."""
    section = config.get(WORKERS, {})
    known = ("visibility_timeout_s", "scan_timeout_s")
    if not isinstance(section, Mapping):
        raise ConfigError(f"[{WORKERS}]: expected a table of {', '.join(known)}")
    knobs: dict[str, float] = {}
    for key, value in section.items():
        if key not in known:
            raise ConfigError(f"[{WORKERS}]: unknown key {key!r} (known: {', '.join(known)})")
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or value <= 0:
            raise ConfigError(f"[{WORKERS}].{key}: expected positive seconds, got {value!r}")
        knobs[key] = float(value)
    return knobs


def _is_host_port(node: str) -> bool:
    match = _HOST_PORT.fullmatch(node.strip())
    return match is not None and 0 < int(match[2]) < 65536


def _positive_int(env: Mapping[str, str], variable: str, default: int) -> int:
    text = env.get(variable, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{variable}: expected a positive integer, got {text[:40]!r}")
    return int(text)
