"""Files the orchestrator keeps (uploads, datasets, checkpoints, exports, screenshots)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from bot.db.base import Base, utcnow
from bot.db.models._columns import Key, foreign_key, primary_key


class StoredObject(Base):
    """A file under the data directory, addressed by a stable key and checked by its SHA-256."""

    __tablename__ = "storage"
    __table_args__ = (Index(None, "kind", "created_at"),)

    id: Mapped[int] = primary_key()
    key: Mapped[str] = mapped_column(Key, unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(1000))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str | None] = mapped_column(String(255))
    owner_user_id: Mapped[int | None] = foreign_key("users.id", ondelete="SET NULL", nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
