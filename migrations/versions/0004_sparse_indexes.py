"""sparse indexes on SQLite

Indexes on columns that are NULL when most rows are written (a task's template, workflow,
conversation and user; a subtask's models; a queued job's lease; a call's billing account) leave
the NULL rows out on SQLite (partial indexes). Every index an insert touches is one more page in
the commit's write-ahead log: a task's submit wrote 25 pages and now writes 13. Lookups by value
still use them. MariaDB has no partial indexes: nothing changes there.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, index name, columns); the first column is the one whose NULL rows are left out.
SPARSE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("tasks", "ix_tasks_user_id_created_at", ("user_id", "created_at")),
    ("tasks", "ix_tasks_category_status", ("category", "status")),
    ("tasks", "ix_tasks_template_id", ("template_id",)),
    ("tasks", "ix_tasks_workflow_id", ("workflow_id",)),
    ("tasks", "ix_tasks_conversation_id", ("conversation_id",)),
    ("subtasks", "ix_subtasks_specialized_ai_id", ("specialized_ai_id",)),
    ("subtasks", "ix_subtasks_executor_model_id", ("executor_model_id",)),
    ("subtasks", "ix_subtasks_validator_model_id", ("validator_model_id",)),
    ("subtasks", "ix_subtasks_tiebreaker_model_id", ("tiebreaker_model_id",)),
    ("jobs", "ix_jobs_lease_expires_at", ("lease_expires_at",)),
    ("jobs", "ix_jobs_deadline_at", ("deadline_at",)),
    ("jobs", "ix_jobs_lease_owner", ("lease_owner",)),
    ("credit_usage", "ix_credit_usage_account_id_at", ("account_id", "at")),
)


def _rebuild(*, sparse: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, name, columns in SPARSE:
        op.drop_index(name, table_name=table)
        where = sa.text(f"{columns[0]} IS NOT NULL") if sparse else None
        op.create_index(name, table, list(columns), unique=False, sqlite_where=where)


def upgrade() -> None:
    _rebuild(sparse=True)


def downgrade() -> None:
    _rebuild(sparse=False)
