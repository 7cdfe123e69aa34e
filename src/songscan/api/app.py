"""The FastAPI application, and the composition root: `build_app(settings)` makes each part
from the settings and hands it what it needs.

Mounts the accounts pages (dashboard, sign-up, log-in, Stripe webhook), the recognition API
(`recognition.py`), the long jobs' routes and their runner (`jobs.py`), the try-it pages
(`tryit.py`), /docs and the pages' static files, under the security headers of
`security.py`. `app.state` holds what the routes share: `settings`, `accounts` (the accounts
service), `payments`, `recognition` (the recognition side, with the enterprise use case) and
`job_runner`. The lifespan starts and stops the job runner and the process's housekeeping (its
lease, and the sweeps after crashed siblings: `api/housekeeping.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from songscan import settings as songscan_settings
from songscan.accounts.payments import Payments
from songscan.accounts.service import Accounts
from songscan.api import dashboard, jobs, openapi, recognition, streams, tryit
from songscan.api.housekeeping import Housekeeping
from songscan.api.logs import AccessLog
from songscan.api.security import SecurityHeaders, checkout_origin, content_security_policy
from songscan.config import EngineConfig
from songscan.scan import shutdown_pools
from songscan.settings import Settings


def create_app(data_dir: Path, config: Mapping[str, Any]) -> FastAPI:
    """The app of a data directory with an already parsed songscan.toml (the backends as the
    environment and `config` name them)."""
    return build_app(songscan_settings.from_config(data_dir, config))


def build_app(settings: Settings) -> FastAPI:
    accounts = Accounts(settings.database_url, settings.config, data_dir=settings.data_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        housekeeping = Housekeeping(accounts, app.state.recognition.settings.tmp_dir)
        housekeeping.start()  # before any reservation: each must name its holder
        app.state.job_runner.start()
        app.state.streams.supervisor.start()  # this process's stream listeners
        yield
        app.state.streams.supervisor.stop()
        app.state.job_runner.stop()
        housekeeping.stop()
        accounts.close()
        shutdown_pools()  # the scan pool's processes end with the server

    # /docs is openapi.install_docs's (no CDN); no /redoc (its script needs inline styles).
    app = FastAPI(title="songscan", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.data_dir = settings.data_dir
    app.state.config = settings.config
    app.state.accounts = accounts
    app.state.payments = Payments(accounts, settings.config)
    app.include_router(dashboard.router)
    install_recognition(app, settings, accounts)
    streams.install(app)  # AudD's streams API; shares the recognition side's settings
    openapi.install_docs(app)
    stripe_api = app.state.payments.config.api_base
    app.add_middleware(
        SecurityHeaders, csp=content_security_policy(form_targets=checkout_origin(stripe_api))
    )
    return app


def install_recognition(app: FastAPI, settings: Settings, accounts: Accounts) -> None:
    """The recognition API, the long jobs (routes, and the runner the lifespan starts) and the
    try-it pages, over one `Recognition` service."""
    engine = EngineConfig.from_config(settings.config, settings.catalog_url, settings.index_url)
    remote = settings.remote_scans()
    if remote is not None:  # enterprise scans on Celery workers
        engine = replace(engine, remote=remote)
    service = recognition.Recognition(settings.data_dir, settings.config, accounts, engine)
    if remote is not None:
        from songscan.api import worker_media
        from songscan.distributed.dispatch import REGISTRY

        worker_media.install(app, remote)
        service.metrics.registry.register(REGISTRY)
    app.state.recognition = service
    app.state.job_runner = jobs.JobRunner(service)
    app.include_router(recognition.router)
    app.include_router(jobs.router)
    app.include_router(tryit.router)
    app.add_middleware(AccessLog)  # an access line for the requests no route logs
