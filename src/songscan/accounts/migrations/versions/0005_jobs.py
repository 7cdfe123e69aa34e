"""Long jobs move into this database (from `DATA/jobs/jobs.sqlite`), so that every API node on
it sees them, and `job_nodes` says when each node (a data directory) was last alive.

A job names its node (where its media is) and its runner (the server instance working on it,
which may while its `server_leases` row is alive). Rows of an existing `jobs.sqlite` are
imported by the first server to start after the upgrade (`songscan.jobs.JobStore`), not here:
the migration does not know the data directory.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("seen_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("http_method", sa.String(8), nullable=False),
        sa.Column("media_name", sa.Text(), nullable=True),
        sa.Column("chunks_total", sa.Integer(), nullable=True),
        sa.Column("chunks_done", sa.Integer(), nullable=False),
        sa.Column("reservation_id", sa.Integer(), nullable=True),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("billed", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("media_type", sa.String(255), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("cleaned", sa.Boolean(), nullable=False),
        sa.Column("node", sa.String(64), nullable=True),
        sa.Column("runner", sa.String(64), nullable=True),
    )
    op.create_index("ix_jobs_account_created", "jobs", ["account_id", "created_at"])
    op.create_index("ix_jobs_cleaned_created", "jobs", ["cleaned", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_cleaned_created", "jobs")
    op.drop_index("ix_jobs_account_created", "jobs")
    op.drop_table("jobs")
    op.drop_table("job_nodes")
