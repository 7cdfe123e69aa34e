"""Alembic environment for the catalog's schema; run by `songscan.catalogdb.migrate.upgrade`."""

from __future__ import annotations

from alembic import context

from songscan.catalogdb.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only catalogdb.migrate.upgrade runs these
    raise RuntimeError("run the catalog migrations through songscan.catalogdb.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=context.config.attributes["version_table"],
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
