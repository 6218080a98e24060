"""What people and validators think of each model: ratings and per-category quality metrics."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Float, Index, SmallInteger, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db.base import Base, utcnow
from bot.db.models._columns import ShortKey, foreign_key, primary_key
from bot.db.models.providers import AiModel


class ModelRating(Base):
    """A person's rating of an answer: -1 (thumbs down), 0..5 (stars or thumbs up as 5)."""

    __tablename__ = "model_ratings"
    __table_args__ = (
        CheckConstraint("rating >= -1 AND rating <= 5", name="rating_range"),
        UniqueConstraint("user_id", "message_id"),
        Index(None, "model_id", "created_at"),
    )

    id: Mapped[int] = primary_key()
    model_id: Mapped[int] = foreign_key("ai_models.id", ondelete="CASCADE")
    user_id: Mapped[int | None] = foreign_key("users.id", ondelete="SET NULL", nullable=True)
    task_id: Mapped[int | None] = foreign_key("tasks.id", ondelete="SET NULL", nullable=True, index=True)
    subtask_id: Mapped[int | None] = foreign_key("subtasks.id", ondelete="SET NULL", nullable=True, index=True)
    message_id: Mapped[int | None] = foreign_key("chat_messages.id", ondelete="SET NULL", nullable=True, index=True)
    category: Mapped[str | None] = mapped_column(ShortKey)
    rating: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AiQualityMetric(Base):
    """A model's track record in one task category; the selector ranks models by it."""

    __tablename__ = "ai_quality_metrics"
    __table_args__ = (UniqueConstraint("model_id", "category"), Index(None, "category", "rank"))

    id: Mapped[int] = primary_key()
    model_id: Mapped[int] = foreign_key("ai_models.id", ondelete="CASCADE")
    category: Mapped[str] = mapped_column(ShortKey)
    runs: Mapped[int] = mapped_column(default=0, server_default="0")
    successes: Mapped[int] = mapped_column(default=0, server_default="0")
    failures: Mapped[int] = mapped_column(default=0, server_default="0")
    success_rate: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    mean_time_ms: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # How many of this model's results were validated, and their mean score (0-100).
    validations: Mapped[int] = mapped_column(default=0, server_default="0")
    mean_validation_score: Mapped[float | None] = mapped_column(Float)
    tiebreaks_won: Mapped[int] = mapped_column(default=0, server_default="0")
    tiebreaks_lost: Mapped[int] = mapped_column(default=0, server_default="0")
    ratings_count: Mapped[int] = mapped_column(default=0, server_default="0")
    ratings_mean: Mapped[float | None] = mapped_column(Float)
    last_used_at: Mapped[datetime | None]
    # 1 is best within the category; recomputed after every execution.
    rank: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    model: Mapped[AiModel] = relationship(lazy="raise")
