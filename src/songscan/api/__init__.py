"""songscan over HTTP: the AudD-compatible API and the accounts dashboard."""
