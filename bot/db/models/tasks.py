"""Work: tasks, the subtasks a planner split them into, their measurements and execution logs.

The indexes follow the engine's queries: pick the next runnable work by (status, priority,
created_at); list a task's subtasks by status; read logs by task, model or level in time order.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Float, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db.base import Base, TimestampMixin, utcnow
from bot.db.models._columns import (
    BigIntFK,
    Key,
    LongText,
    ShortKey,
    enum_column,
    foreign_key,
    primary_key,
    sparse_index,
)
from bot.db.models.enums import LogLevel, SubtaskStatus, TaskStatus

if TYPE_CHECKING:
    from bot.db.models.users import User


class Task(TimestampMixin, Base):
    """A request someone made; the planner splits it into subtasks."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index(None, "status", "priority", "created_at"),
        sparse_index("user_id", "created_at"),
        sparse_index("category", "status"),
        sparse_index("template_id"),
        sparse_index("workflow_id"),
        sparse_index("conversation_id"),
    )

    id: Mapped[int] = primary_key()
    user_id: Mapped[int | None] = foreign_key("users.id", ondelete="SET NULL", nullable=True)
    title: Mapped[str] = mapped_column(Key)
    description: Mapped[str] = mapped_column(LongText, default="")
    status: Mapped[TaskStatus] = enum_column(TaskStatus, default=TaskStatus.PENDING)
    # Higher runs first (urgency); 0 is normal.
    priority: Mapped[int] = mapped_column(default=0, server_default="0")
    category: Mapped[str | None] = mapped_column(ShortKey)
    template_id: Mapped[int | None] = foreign_key("ai_templates.id", ondelete="SET NULL", nullable=True)
    workflow_id: Mapped[int | None] = foreign_key("ai_workflows.id", ondelete="SET NULL", nullable=True)
    conversation_id: Mapped[int | None] = foreign_key("chat_conversations.id", ondelete="SET NULL", nullable=True)
    result: Mapped[str | None] = mapped_column(LongText)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(Key, unique=True)
    # Where the request came from and where answers go: {platform, channel_id, thread_id, message_id}.
    origin: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deadline_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    user: Mapped[User | None] = relationship(lazy="raise")
    subtasks: Mapped[list[Subtask]] = relationship(
        back_populates="task",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Subtask.seq",
        lazy="raise",
    )

    def __repr__(self) -> str:
        return f"<Task id={self.id} status={self.status} title={self.title!r}>"


class Subtask(TimestampMixin, Base):
    """One step of a task: executed by one model, validated by another, tie-broken by a third."""

    __tablename__ = "subtasks"
    __table_args__ = (
        UniqueConstraint("task_id", "seq"),
        Index(None, "task_id", "status"),
        Index(None, "status", "priority", "created_at"),
        sparse_index("specialized_ai_id"),
        sparse_index("executor_model_id"),
        sparse_index("validator_model_id"),
        sparse_index("tiebreaker_model_id"),
    )

    id: Mapped[int] = primary_key()
    task_id: Mapped[int] = foreign_key("tasks.id", ondelete="CASCADE")
    # Position in the plan, from 1; `depends_on` lists the seq numbers that must finish first.
    seq: Mapped[int]
    title: Mapped[str] = mapped_column(Key)
    description: Mapped[str] = mapped_column(LongText, default="")
    category: Mapped[str | None] = mapped_column(ShortKey)
    depends_on: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[SubtaskStatus] = enum_column(SubtaskStatus, default=SubtaskStatus.PENDING)
    priority: Mapped[int] = mapped_column(default=0, server_default="0")
    expected_output: Mapped[str | None] = mapped_column(Text)
    specialized_ai_id: Mapped[int | None] = foreign_key("specialized_ais.id", ondelete="SET NULL", nullable=True)
    executor_model_id: Mapped[int | None] = foreign_key("ai_models.id", ondelete="SET NULL", nullable=True)
    validator_model_id: Mapped[int | None] = foreign_key("ai_models.id", ondelete="SET NULL", nullable=True)
    tiebreaker_model_id: Mapped[int | None] = foreign_key("ai_models.id", ondelete="SET NULL", nullable=True)
    result: Mapped[str | None] = mapped_column(LongText)
    # The validator's structured verdict (score, decision, issues) and the tie-break, if any.
    validation: Mapped[dict[str, Any] | None]
    validation_score: Mapped[float | None] = mapped_column(Float)
    divergence_pct: Mapped[float | None] = mapped_column(Float)
    # The hallucination detector's 0-100 confidence in the accepted result.
    confidence_score: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(default=3, server_default="3")
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(Key, unique=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    task: Mapped[Task] = relationship(back_populates="subtasks", lazy="raise")

    def __repr__(self) -> str:
        return f"<Subtask id={self.id} task_id={self.task_id} seq={self.seq} status={self.status}>"


class TaskMonitoring(Base):
    """A measurement taken while a task ran (tokens/s, queue wait, memory…)."""

    __tablename__ = "task_monitoring"
    __table_args__ = (Index(None, "task_id", "metric", "at"),)

    id: Mapped[int] = primary_key()
    task_id: Mapped[int] = foreign_key("tasks.id", ondelete="CASCADE")
    subtask_id: Mapped[int | None] = foreign_key("subtasks.id", ondelete="CASCADE", nullable=True, index=True)
    metric: Mapped[str] = mapped_column(ShortKey)
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str | None] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ExecutionLog(Base):
    """Every interaction with a model and every engine decision, with prompt and answer."""

    __tablename__ = "execution_logs"
    __table_args__ = (
        Index(None, "task_id", "created_at"),
        Index(None, "subtask_id", "created_at"),
        Index(None, "model_id", "created_at"),
        Index(None, "level", "created_at"),
        Index(None, "event", "created_at"),
    )

    id: Mapped[int] = primary_key()
    task_id: Mapped[int | None] = foreign_key("tasks.id", ondelete="CASCADE", nullable=True)
    subtask_id: Mapped[int | None] = foreign_key("subtasks.id", ondelete="CASCADE", nullable=True)
    model_id: Mapped[int | None] = foreign_key("ai_models.id", ondelete="SET NULL", nullable=True)
    provider_id: Mapped[int | None] = foreign_key("ai_providers.id", ondelete="SET NULL", nullable=True, index=True)
    level: Mapped[LogLevel] = enum_column(LogLevel, default=LogLevel.INFO)
    event: Mapped[str] = mapped_column(ShortKey)
    prompt: Mapped[str | None] = mapped_column(LongText)
    response: Mapped[str | None] = mapped_column(LongText)
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    latency_ms: Mapped[int | None]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TaskEvent(Base):
    """A task event on its way to the other daemons sharing this database (bot/engine/relay.py).

    Kept for minutes, not forever: followers read it within a second or two, and a task's durable
    record is its own rows. No foreign key, so writing one never waits on the task's row lock and
    a deleted task's events simply expire.
    """

    __tablename__ = "task_events"
    __table_args__ = (Index(None, "created_at"),)

    id: Mapped[int] = primary_key()
    origin: Mapped[str] = mapped_column(String(128))
    task_id: Mapped[int | None] = mapped_column(BigIntFK, nullable=True)
    kind: Mapped[str] = mapped_column(ShortKey)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
