"""`songscan serve`: the web app on Uvicorn, configured from the data directory."""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI

from .. import settings
from .app import create_app


def app_factory() -> FastAPI:
    """The app for the data directory in $SONGSCAN_DATA (one per Uvicorn worker process)."""
    data = settings.data_dir()
    return create_app(data, settings.load_config(data))


def serve(data_dir: str, host: str, port: int, workers: int) -> None:
    os.environ["SONGSCAN_DATA"] = data_dir
    uvicorn.run(
        "songscan.api.serve:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        log_level="info",
    )
