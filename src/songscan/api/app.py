"""The FastAPI application: `create_app(data_dir, config)`.

Mounts the accounts pages (dashboard, sign-up, log-in, Stripe webhook), /docs and the pages'
static files, under the security headers of `security.py`. The recognition routes
are added here by the API module, with the runner of long jobs that the lifespan starts and
stops. `app.state.accounts` is the accounts service and `app.state.payments` the payments
side, both shared by every route. The lifespan also runs the process's housekeeping (its
lease, and the sweeps after crashed siblings: `api/housekeeping.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from songscan.accounts.payments import Payments
from songscan.accounts.service import Accounts
from songscan.api import dashboard, openapi, recognition, streams
from songscan.api.housekeeping import Housekeeping
from songscan.api.security import SecurityHeaders, checkout_origin, content_security_policy
from songscan.scan import shutdown_pools


def create_app(data_dir: Path, config: Mapping[str, Any]) -> FastAPI:
    accounts = Accounts.open(data_dir, config)

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
    app.state.data_dir = data_dir
    app.state.config = config
    app.state.accounts = accounts
    app.state.payments = Payments(accounts, config)
    app.include_router(dashboard.router)
    recognition.install(app)
    streams.install(app)  # AudD's streams API; shares the recognition side's settings
    openapi.install_docs(app)
    stripe_api = app.state.payments.config.api_base
    app.add_middleware(
        SecurityHeaders, csp=content_security_policy(form_targets=checkout_origin(stripe_api))
    )
    return app
