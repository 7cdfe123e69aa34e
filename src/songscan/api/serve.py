"""`songscan serve`: the web app on Uvicorn, configured from the data directory."""

from __future__ import annotations

import os
import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from .. import settings
from .app import create_app


def app_factory() -> FastAPI:
    """The app for the data directory in $SONGSCAN_DATA (one per Uvicorn worker process)."""
    data = settings.data_dir()
    return create_app(data, settings.load_config(data))


class _TcpConfig(uvicorn.Config):
    """Uvicorn's listening socket for several workers carries proto 0, so asyncio leaves
    Nagle's algorithm on for every accepted connection and each keep-alive response waits
    ~40 ms for the client's delayed ACK (Kludex/uvicorn#3149). Label it IPPROTO_TCP."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        return sock


def serve(data_dir: str, host: str, port: int, workers: int) -> None:
    os.environ["SONGSCAN_DATA"] = data_dir
    config = _TcpConfig(
        "songscan.api.serve:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        log_level="info",
    )
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()
