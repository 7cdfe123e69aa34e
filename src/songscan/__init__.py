"""songscan: self-hosted, AudD-compatible music recognition."""

__version__ = "0.1.0"
