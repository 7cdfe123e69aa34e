"""`songscan serve`: the web app on Uvicorn, configured from the data directory.

One process per core by default (Uvicorn's supervisor and its workers sharing the listening
sockets). With `enterprise_port`, a second listening socket serves the enterprise method on
`/`, so that an AudD client's two base URLs can both be a host's root (docs/sdk.md).
Logging is set up by `logs.log_config`, in the supervisor and again in each worker.
"""

from __future__ import annotations

import os
import pickle
import socket
import time

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess, multiprocess

from .. import settings
from ..allocator import tune_allocator
from ..settings import Settings
from ..workers import end_with_owner
from .app import build_app
from .logs import access_file, log_config

# How the supervisor tells its worker processes (which import `app_factory` afresh) what to
# serve: the data directory (`settings.DATA_ENV`, from which each loads the same settings), the
# enterprise port, and its own pid. Read by `_from_supervisor` alone.
ENTERPRISE_PORT_ENV = "SONGSCAN_ENTERPRISE_PORT"
SUPERVISOR_ENV = "SONGSCAN_SUPERVISOR_PID"  # set when the app runs in a worker process


def app_factory() -> FastAPI:
    """The app for the data directory the supervisor named (one per Uvicorn worker process)."""
    tune_allocator()  # a worker process starts afresh: `songscan serve` tuned its supervisor
    enterprise_port, has_supervisor = _from_supervisor()
    if has_supervisor:
        # A killed supervisor (SIGKILL, the OOM killer) cannot stop its workers: they would go
        # on serving the old socket and running long jobs beside a restarted server.
        end_with_owner(graceful=True)
    app = build_app(settings.load())
    app.state.enterprise_port = enterprise_port
    return app


def _from_supervisor() -> tuple[int | None, bool]:
    """The enterprise port, and whether a supervisor started this process."""
    port = os.environ.get(ENTERPRISE_PORT_ENV)
    return (int(port) if port else None), bool(os.environ.get(SUPERVISOR_ENV))


def _to_workers(loaded: Settings, enterprise_port: int | None) -> None:
    """What `app_factory` reads in the workers (they inherit this process's environment)."""
    os.environ[settings.DATA_ENV] = str(loaded.data_dir)
    if enterprise_port:
        os.environ[ENTERPRISE_PORT_ENV] = str(enterprise_port)
    else:
        os.environ.pop(ENTERPRISE_PORT_ENV, None)


def check_app(loaded: Settings) -> None:
    """Make the app once before any worker starts: a bad songscan.toml, a data directory of
    another format or a database that cannot be migrated ends `serve` with one SongscanError
    (one line from the CLI), not a traceback in every worker; the database is migrated once,
    not by the workers at the same time."""
    app = build_app(loaded)
    app.state.accounts.close()


class _TcpConfig(uvicorn.Config):
    """Uvicorn's listening socket for several workers carries proto 0, so asyncio leaves
    Nagle's algorithm on for every accepted connection and each keep-alive response waits
    ~40 ms for the client's delayed ACK (Kludex/uvicorn#3149). Label it IPPROTO_TCP."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        return sock


class _Worker(multiprocess.Process):
    """Uvicorn's worker process, whose health check gives up as soon as the process is gone.

    The supervisor holds both ends of the ping pipe, so a worker that dies while a ping is
    unanswered (a SIGTERM or Ctrl-C to the process group reaching it in its start-up, before
    Uvicorn handles signals) never closes it: Uvicorn's check would wait out the whole
    `timeout_worker_healthcheck` (60 s here), with the supervisor deaf to the signal meanwhile."""

    def _healthcheck(self, timeout: float) -> bool | None:
        deadline = time.monotonic() + timeout
        try:
            self.parent_conn.send(b"ping")
            while not self.parent_conn.poll(0.1):
                if not self.process.is_alive() or time.monotonic() > deadline:
                    return None
            started: bool = self.parent_conn.recv()
            return started
        except (OSError, EOFError, pickle.UnpicklingError):
            return None


# `Multiprocess` makes its workers from this module attribute (at start, and to replace one).
multiprocess.Process = _Worker  # type: ignore[misc]


def default_workers() -> int:
    """One worker process per core this process may run on."""
    return len(os.sched_getaffinity(0)) or 1


def server_config(
    loaded: Settings, host: str, port: int, workers: int, enterprise_port: int | None = None
) -> _TcpConfig:
    _to_workers(loaded, enterprise_port)
    return _TcpConfig(
        "songscan.api.serve:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers or default_workers(),
        # Uvicorn's `standard` extras: ~20 % less event-loop CPU per request than asyncio + h11
        # (BENCHMARKS.md, load notes).
        loop="uvloop",
        http="httptools",
        proxy_headers=True,
        access_log=False,  # songscan writes its own, tokens masked (logs.py)
        log_config=log_config(access_file(loaded.config, loaded.data_dir)),
        log_level="info",
        # A worker that has not answered the supervisor's ping by then is killed and replaced;
        # Uvicorn's 5 s is shorter than a worker's start-up on a busy machine (imports, catalog).
        timeout_worker_healthcheck=60,
    )


def serve(
    loaded: Settings, host: str, port: int, workers: int = 0, enterprise_port: int | None = None
) -> None:
    """Serve until SIGINT/SIGTERM; `workers` 0 means one per core."""
    check_app(loaded)
    config = server_config(loaded, host, port, workers, enterprise_port)
    sockets = [config.bind_socket()]
    if enterprise_port:
        # log_config=None: a Config applies its logging set-up when made; this one only binds.
        second = _TcpConfig(config.app, host=host, port=enterprise_port, log_config=None)
        sockets.append(second.bind_socket())
    if config.workers > 1:
        os.environ[SUPERVISOR_ENV] = str(os.getpid())  # the workers inherit the environment
        Multiprocess(config, sockets=sockets).run()
    else:
        uvicorn.Server(config).run(sockets=sockets)
