"""Alembic migrations of the accounts schema."""
