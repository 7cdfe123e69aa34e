"""The Celery side: the app both ends configure alike, the task a worker runs, `songscan worker`.

One task, `songscan.scan_run`: one run of consecutive chunks of one scan (`scan.scan_unit`),
its media read from the API node (`media_link`), matched against the catalog and index the
worker's own settings name (PostgreSQL and the Redis Cluster: a worker has no catalog of its
own). Its payload and result are JSON (`wire`).

Delivery (docs/scale-out.md, "Workers"): a run is acknowledged when it is done (`acks_late`),
so a worker that dies mid-run leaves it unacknowledged; the broker hands it out again once the
visibility timeout has passed (`[workers] visibility_timeout_s`, longer than any run), or at
once when only the pool process died (`task_reject_on_worker_lost`). Each process takes one run
at a time (`worker_prefetch_multiplier=1`): a run waiting behind another on a busy worker
could be running on an idle one. A run is pure computation, so running one twice costs time,
never a wrong result or a second bill: the API node reserves and settles.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from songscan.chunks import Chunk
from songscan.errors import ConfigError, SongscanError
from songscan.scan import catalog_for, scan_unit, worker_media
from songscan.settings import Settings
from songscan.streams.worker import StreamProcess

from .celery_app import QUEUE, TASK, broker_address, celery_app
from .media_link import MediaLink, RemoteMedia
from .wire import VERSION, engine_from_wire, from_wire, result_to_wire

log = logging.getLogger("songscan.worker")


# -- the worker ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerCatalog:
    """What a worker matches against: its data directory and its settings' catalog and index."""

    data_dir: Path
    catalog_url: str
    index_url: str


_worker: WorkerCatalog | None = None  # set by `run_worker` before the pool forks


def scan_run(payload: dict[str, Any]) -> dict[str, Any]:
    """The task: one run of chunks; `{"result": …}`, or `{"error": …}` for a songscan error
    (the file cannot be decoded, say: the API node answers it as the embedded scan would)."""
    if _worker is None:
        raise RuntimeError("songscan.scan_run runs in `songscan worker` only")
    if payload.get("v") != VERSION:
        raise ValueError(f"a run in payload version {payload.get('v')!r}; this worker reads 1")
    cfg = engine_from_wire(payload["engine"], _worker.catalog_url, _worker.index_url)
    unit = [from_wire(Chunk, c) for c in payload["chunks"]]
    owners = None if payload["owners"] is None else tuple(payload["owners"])
    media = MediaLink(**payload["media"])
    try:
        with worker_media.open((media.url, payload["scan"]), lambda: RemoteMedia(media)) as m:
            result = scan_unit(m, catalog_for(_worker.data_dir, cfg), unit, cfg, owners)
    except SongscanError as exc:
        return {"error": {"type": type(exc).__name__, "code": exc.code, "message": exc.message}}
    return {"result": result_to_wire(result)}


def worker_catalog(settings: Settings) -> WorkerCatalog:
    """The worker's catalog, or ConfigError for settings a worker cannot work with."""
    if settings.broker_url is None:
        raise ConfigError(
            "songscan worker needs a broker: set SONGSCAN_BROKER_URL (or [backends] "
            "broker_url) to redis://HOST:PORT/N, the same as the API nodes'"
        )
    if settings.catalog_url is None or settings.index_url is None:
        raise ConfigError(
            "songscan worker needs the shared catalog and index: set SONGSCAN_DATABASE_URL "
            "(postgresql+psycopg://…) and SONGSCAN_INDEX_URL (redis-cluster://…) as on the API "
            "nodes; a worker with the embedded catalog would see none of their tracks"
        )
    if not settings.catalog_url.startswith("postgresql"):
        raise ConfigError(
            "songscan worker needs the catalog in PostgreSQL (SONGSCAN_DATABASE_URL="
            "postgresql+psycopg://…): a SQLite file is on one machine only"
        )
    return WorkerCatalog(settings.data_dir, settings.catalog_url, settings.index_url)


def check_broker(app: Celery, broker_url: str) -> None:
    """ConfigError (one line) unless the broker answers now."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=5)
    except Exception as exc:
        raise ConfigError(
            f"cannot reach the broker at {broker_address(broker_url)}: {_reason(exc)}"
        ) from None


def check_catalog(worker: WorkerCatalog) -> None:
    """Open the catalog and its index once, so that unreachable ones fail the start in one
    line, not every run; closed again before the pool forks (a connection is not shared)."""
    from songscan.catalog import Catalog

    try:
        catalog = Catalog(
            worker.data_dir, database_url=worker.catalog_url, index_url=worker.index_url
        )
        catalog.close()
    except SongscanError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot open the catalog or its index: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def run_worker(settings: Settings, concurrency: int | None, loglevel: str = "INFO") -> None:
    """Run a Celery worker on the broker of `settings` until it is stopped (SIGTERM: it
    finishes its runs first; a second one, or SIGKILL, and the broker delivers them again),
    and beside it the process that listens to live streams (`songscan.streams.worker`)."""
    global _worker
    _worker = worker_catalog(settings)
    assert settings.broker_url is not None
    app = celery_app(settings.broker_url, settings.visibility_timeout_s)
    app.task(name=TASK)(scan_run)
    check_broker(app, settings.broker_url)
    check_catalog(_worker)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per range request
    listening = StreamProcess(settings)  # the live streams, beside the runs
    listening.start()
    try:
        app.worker_main(
            [
                "worker",
                f"--concurrency={concurrency or os.cpu_count() or 1}",
                f"--loglevel={loglevel}",
                f"--queues={QUEUE}",
                "--without-gossip",
                "--without-mingle",
                f"--hostname=songscan@{os.uname().nodename}-{os.getpid()}",
            ]
        )
    finally:
        listening.stop()
