"""How the command line reports an error, the same in every command (`songscan …` and
`songscan accounts …`): one line on stderr, `error (CODE): message`, and a non-zero exit (2 for
bad parameters, as for a usage error; 1 otherwise; 130 for Ctrl-C, without a traceback)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from .errors import InvalidParameters, SongscanError

T = TypeVar("T")
P = ParamSpec("P")


def fail(exc: SongscanError) -> typer.Exit:
    """Print `exc` as the one error line; returns the exit to raise."""
    message = " ".join(exc.message.split())  # one line, whatever the message holds
    sys.stderr.write(f"error ({exc.code}): {message}\n")
    sys.stderr.flush()
    return typer.Exit(2 if isinstance(exc, InvalidParameters) else 1)


def guard(fn: Callable[[], T]) -> T:
    """Run a command body: songscan errors end in one line on stderr and a non-zero exit."""
    try:
        return fn()
    except SongscanError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def guarded(command: Callable[P, T]) -> Callable[P, T]:
    """A command whose whole body runs under `guard` (Typer reads the wrapped signature)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return guard(lambda: command(*args, **kwargs))

    return run
