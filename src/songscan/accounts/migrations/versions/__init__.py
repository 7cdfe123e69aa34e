"""Alembic revisions of the accounts schema, oldest first."""
