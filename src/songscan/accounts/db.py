"""The database: which one, its engine, and bringing its schema up to date with Alembic.

SQLite in the data directory unless an explicit URL names another, e.g.
`postgresql+psycopg://user:pass@host/db` (the settings' `database_url`: `SONGSCAN_DATABASE_URL`
or `[backends] database_url`, see `songscan.settings`). Migrations run at startup, under a lock, so
several processes starting together do not race.

A connection refused or lost (PostgreSQL restarting) fails the statement with
`DatabaseUnavailable`, logged once per outage (`songscan.outage`); the pool's pre-ping
replaces dead connections, so requests succeed again as soon as the database is back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from songscan.errors import ConfigError
from songscan.outage import Outage
from songscan.settings import sqlite_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "accounts_alembic_version"
READ_ONLY = "songscan_read_only"  # execution option: a transaction that only reads
_PG_MIGRATION_LOCK = 0x50_4E_47_53  # any constant: pg_advisory_xact_lock key for migrations


def database_url(data_dir: Path | None, explicit: str | None = None) -> str:
    """The explicit URL, else SQLite in the data directory."""
    if explicit:
        return explicit
    if data_dir is None:
        raise ConfigError("no database: neither a database URL nor a data directory was given")
    return sqlite_url(data_dir)


def _prepare_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below open every transaction; WAL lets readers run
        # alongside the one writer.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: a read-then-write transaction can then never
        # fail half-way with SQLITE_BUSY; concurrent writers wait (busy timeout) instead.
        # Read-only transactions (READ_ONLY option) stay deferred and run beside the writer.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _report_outages(engine: Engine) -> None:
    outage = Outage("accounts")

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # A failed pre-ping is the pool's to handle (it reconnects): only what reaches the
        # caller counts. Raising here replaces SQLAlchemy's error (after its clean-up).
        lost = context.is_disconnect or isinstance(context.sqlalchemy_exception, OperationalError)
        if lost and not context.is_pre_ping:
            raise outage.failed(context.original_exception) from None

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_connection: Any, _record: Any) -> None:
        outage.connected()


def make_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            pool_size=8,
            max_overflow=8,
            pool_timeout=120,
        )
        _prepare_sqlite(engine)
    else:
        engine = create_engine(
            url, pool_size=10, max_overflow=20, pool_timeout=120, pool_pre_ping=True
        )
        _report_outages(engine)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the accounts schema to `revision` (head by default), in one transaction."""
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
