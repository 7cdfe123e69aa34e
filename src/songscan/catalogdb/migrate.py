"""Bringing a catalog database to the head revision with Alembic (imported only when one is
behind: see the package docstring)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The revision whose schema a data directory written before the catalog had migrations holds.
PRE_ALEMBIC = "0001"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(url: str, dialect: str, version_table: str, pg_lock: int) -> None:
    """Migrate to head in one transaction, under a lock (processes starting together)."""
    engine = create_engine(_sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            if dialect == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({pg_lock})")
            else:
                connection.exec_driver_sql("SELECT 1")  # pysqlite begins lazily
            config = alembic_config()
            config.attributes["connection"] = connection
            config.attributes["version_table"] = version_table
            tables = set(inspect(connection).get_table_names())
            if "tracks" in tables and version_table not in tables:
                command.stamp(config, PRE_ALEMBIC)  # written before migrations: 0001's schema
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def _sqlalchemy_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return url.replace("postgresql://", "postgresql+psycopg://", 1)
    return url
