"""Reusable prompt templates, multi-step workflows and standing instructions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Index, String, Text, true
from sqlalchemy.orm import Mapped, mapped_column

from bot.db.base import Base, TimestampMixin
from bot.db.models._columns import LongText, ShortKey, enum_column, foreign_key, primary_key
from bot.db.models.enums import InstructionScope


class AiTemplate(TimestampMixin, Base):
    """A prompt with `{variables}`; `variables` is the JSON Schema the values must satisfy."""

    __tablename__ = "ai_templates"

    id: Mapped[int] = primary_key()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    category: Mapped[str | None] = mapped_column(ShortKey, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(LongText)
    variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    specialized_ai_id: Mapped[int | None] = foreign_key(
        "specialized_ais.id", ondelete="SET NULL", nullable=True, index=True
    )
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())


class AiWorkflow(TimestampMixin, Base):
    """A named sequence of steps (each a template or a role) run as one task."""

    __tablename__ = "ai_workflows"

    id: Mapped[int] = primary_key()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[int] = mapped_column(default=1, server_default="1")
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())


class Instruction(TimestampMixin, Base):
    """A standing instruction added to prompts: everywhere, for a category, or for one task."""

    __tablename__ = "instructions"
    __table_args__ = (Index(None, "scope", "category", "is_active"),)

    id: Mapped[int] = primary_key()
    scope: Mapped[InstructionScope] = enum_column(InstructionScope, default=InstructionScope.GLOBAL)
    category: Mapped[str | None] = mapped_column(ShortKey)
    task_id: Mapped[int | None] = foreign_key("tasks.id", ondelete="CASCADE", nullable=True, index=True)
    text: Mapped[str] = mapped_column(Text)
    # Higher comes first in the prompt.
    priority: Mapped[int] = mapped_column(default=0, server_default="0")
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())
