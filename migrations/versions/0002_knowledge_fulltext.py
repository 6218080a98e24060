"""full-text search over the knowledge base

SQLite: an FTS5 table over knowledge_base (external content) kept in step by triggers, with the
rows that already exist indexed. MariaDB: a FULLTEXT index on (title, content). The admin API's
and /kb's search use whichever the backend has.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_UP = (
    "CREATE VIRTUAL TABLE knowledge_base_fts USING fts5("
    "title, content, content='knowledge_base', content_rowid='id')",
    "CREATE TRIGGER knowledge_base_fts_ai AFTER INSERT ON knowledge_base BEGIN "
    "INSERT INTO knowledge_base_fts(rowid, title, content) VALUES (new.id, new.title, new.content); END",
    "CREATE TRIGGER knowledge_base_fts_ad AFTER DELETE ON knowledge_base BEGIN "
    "INSERT INTO knowledge_base_fts(knowledge_base_fts, rowid, title, content) "
    "VALUES ('delete', old.id, old.title, old.content); END",
    "CREATE TRIGGER knowledge_base_fts_au AFTER UPDATE ON knowledge_base BEGIN "
    "INSERT INTO knowledge_base_fts(knowledge_base_fts, rowid, title, content) "
    "VALUES ('delete', old.id, old.title, old.content); "
    "INSERT INTO knowledge_base_fts(rowid, title, content) VALUES (new.id, new.title, new.content); END",
    "INSERT INTO knowledge_base_fts(knowledge_base_fts) VALUES ('rebuild')",
)
SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS knowledge_base_fts_au",
    "DROP TRIGGER IF EXISTS knowledge_base_fts_ad",
    "DROP TRIGGER IF EXISTS knowledge_base_fts_ai",
    "DROP TABLE IF EXISTS knowledge_base_fts",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)
    else:
        op.execute("CREATE FULLTEXT INDEX ix_knowledge_base_fulltext ON knowledge_base (title, content)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DOWN:
            op.execute(statement)
    else:
        op.execute("DROP INDEX ix_knowledge_base_fulltext ON knowledge_base")
