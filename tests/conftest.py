"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import PostgresServer, start_postgres

pytest_plugins = ["tests.browser"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL per test worker; each test gets its own database in it."""
    server = start_postgres()
    yield server
    server.stop()
