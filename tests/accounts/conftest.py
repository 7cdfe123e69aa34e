"""Fixtures: every accounts test that takes `database_url` runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from songscan.accounts.service import Accounts
from songscan.api.app import create_app
from tests.servers import PostgresServer, StripeStandIn, UvicornThread


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'accounts.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def config() -> dict[str, Any]:
    return {"accounts": {"test_token": True, "test_daily_limit": 10}}


@pytest.fixture
def accounts(database_url: str, config: dict[str, Any]) -> Iterator[Accounts]:
    service = Accounts(database_url, config)
    yield service
    service.close()


WEBHOOK_SECRET = "whsec_test_songscan"


@dataclass
class Site:
    """The app served by uvicorn on loopback, with a Stripe stand-in as its Stripe API."""

    base_url: str
    accounts: Accounts
    stripe: StripeStandIn

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, follow_redirects=False, timeout=30)


@pytest.fixture
def site(database_url: str, tmp_path: Path) -> Iterator[Site]:
    with StripeStandIn() as stand_in:
        config = {
            "accounts": {"database_url": database_url, "test_token": True},
            "plans": {"trial": {"rate_limit_per_s": 1000}},  # tests are not about the rate
            "stripe": {
                "secret_key": "sk_test_songscan",
                "webhook_secret": WEBHOOK_SECRET,
                "api_base": stand_in.base_url,
            },
        }
        app = create_app(tmp_path, config)
        with UvicornThread(app) as server:
            yield Site(server.base_url, app.state.accounts, stand_in)
