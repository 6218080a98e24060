"""the claim index in the claim's order

The claim reads queued jobs by `priority DESC, id`; the index was (status, priority, available_at,
id), so both SQLite ("USE TEMP B-TREE FOR RIGHT PART OF ORDER BY") and MariaDB ("Using filesort")
sorted every queued job on each claim: a millisecond per claim with 2,500 queued, growing with
the backlog. (status, priority DESC, id, available_at) is read in order and the claim stops after
its batch. MariaDB honours descending index columns from 10.8; older servers keep sorting.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["status", sa.text("priority DESC"), "id", "available_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["status", "priority", "available_at", "id"], unique=False)
