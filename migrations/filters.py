"""What autogenerate must not compare: objects migrations create by hand, not from the models."""

from __future__ import annotations

from typing import Any

HAND_MADE_PREFIXES = ("knowledge_base_fts", "ix_knowledge_base_fulltext")


def include_name(name: str | None, type_: str, parents: Any) -> bool:
    """Leave out the knowledge base's search index (FTS5 table and triggers, FULLTEXT index)."""
    return not (name or "").startswith(HAND_MADE_PREFIXES)
