"""The knowledge base (documents the models may cite) and the sources it is synchronised from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db.base import Base, TimestampMixin
from bot.db.models._columns import Key, LongText, enum_column, foreign_key, primary_key
from bot.db.models.enums import SyncStatus


class KnowledgeSource(TimestampMixin, Base):
    """Where documents come from (a URL, a folder, a GitHub repo, a Notion workspace…)."""

    __tablename__ = "knowledge_sources"

    id: Mapped[int] = primary_key()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # Extended by integrations, hence a string: url, file, directory, github, notion, google_drive…
    kind: Mapped[str] = mapped_column(String(32), index=True)
    uri: Mapped[str] = mapped_column(String(1000))
    credential_id: Mapped[int | None] = foreign_key("credentials.id", ondelete="SET NULL", nullable=True, index=True)
    sync_status: Mapped[SyncStatus] = enum_column(SyncStatus, default=SyncStatus.NEVER)
    sync_error: Mapped[str | None] = mapped_column(Text)
    last_synced_at: Mapped[datetime | None]
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())

    entries: Mapped[list[KnowledgeEntry]] = relationship(
        back_populates="source", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )


class KnowledgeEntry(TimestampMixin, Base):
    """One document or chunk; the same content from one source is stored once (by SHA-256)."""

    __tablename__ = "knowledge_base"
    __table_args__ = (
        UniqueConstraint("source_id", "content_sha256"),
        Index(None, "source_id", "source_ref"),
    )

    id: Mapped[int] = primary_key()
    title: Mapped[str] = mapped_column(Key)
    content: Mapped[str] = mapped_column(LongText)
    source_id: Mapped[int | None] = foreign_key("knowledge_sources.id", ondelete="CASCADE", nullable=True)
    # The document's id or URL inside its source, to update it on the next sync.
    source_ref: Mapped[str | None] = mapped_column(Key)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    language: Mapped[str | None] = mapped_column(String(8))
    embedding: Mapped[list[Any] | None]
    embedding_model: Mapped[str | None] = mapped_column(Key)
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)

    source: Mapped[KnowledgeSource | None] = relationship(back_populates="entries", lazy="raise")
