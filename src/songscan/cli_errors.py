"""How the command line reports an error: one line on stderr, `error (CODE): message`, and a
non-zero exit (2 for bad parameters, as for a usage error; 1 otherwise)."""

from __future__ import annotations

import sys

import typer

from .errors import InvalidParameters, SongscanError


def fail(exc: SongscanError) -> typer.Exit:
    """Print `exc` as the one error line; returns the exit to raise."""
    message = " ".join(exc.message.split())  # one line, whatever the message holds
    sys.stderr.write(f"error ({exc.code}): {message}\n")
    sys.stderr.flush()
    return typer.Exit(2 if isinstance(exc, InvalidParameters) else 1)
