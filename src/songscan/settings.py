"""Where songscan keeps its data, and the optional config file.

Data directory: `--data DIR`, else `$SONGSCAN_DATA`, else the per-user data dir.
Config file: `$SONGSCAN_CONFIG`, else `songscan.toml` inside the data directory (optional).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import platformdirs

from .errors import ConfigError, SongscanError


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory, created if missing."""
    chosen = explicit or os.environ.get("SONGSCAN_DATA") or platformdirs.user_data_dir("songscan")
    path = Path(chosen).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unusable_data_dir(path, exc) from None
    return path


def unusable_data_dir(path: Path, exc: OSError) -> SongscanError:
    return SongscanError(f"cannot use {path} as the data directory: {exc.strerror}")


def load_config(data: Path) -> dict[str, Any]:
    """The parsed config file, or an empty dict when there is none."""
    path = Path(os.environ.get("SONGSCAN_CONFIG") or data / "songscan.toml")
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
