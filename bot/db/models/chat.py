"""Chat conversations (one per platform thread) and their messages."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db.base import Base, TimestampMixin, utcnow
from bot.db.models._columns import Key, LongText, ShortKey, enum_column, foreign_key, primary_key
from bot.db.models.enums import MessageRole


class ChatConversation(TimestampMixin, Base):
    """A conversation: a Slack/Discord thread, a channel's top level (thread_id ""), or the console."""

    __tablename__ = "chat_conversations"
    __table_args__ = (
        UniqueConstraint("platform", "channel_id", "thread_id"),
        Index(None, "user_id", "last_message_at"),
    )

    id: Mapped[int] = primary_key()
    user_id: Mapped[int | None] = foreign_key("users.id", ondelete="SET NULL", nullable=True)
    platform: Mapped[str] = mapped_column(ShortKey)
    channel_id: Mapped[str] = mapped_column(Key)
    # "" for a channel's top level: a NULL would defeat the unique constraint.
    thread_id: Mapped[str] = mapped_column(Key, default="", server_default="")
    title: Mapped[str] = mapped_column(Key, default="")
    language: Mapped[str | None] = mapped_column(String(8))
    specialized_ai_id: Mapped[int | None] = foreign_key(
        "specialized_ais.id", ondelete="SET NULL", nullable=True, index=True
    )
    last_message_at: Mapped[datetime | None]

    messages: Mapped[list[ChatMessage]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ChatMessage.id",
        lazy="raise",
    )


class ChatMessage(Base):
    """One message in a conversation, from a person or a model."""

    __tablename__ = "chat_messages"
    __table_args__ = (
        Index(None, "conversation_id", "created_at"),
        UniqueConstraint("conversation_id", "platform_message_id"),
    )

    id: Mapped[int] = primary_key()
    conversation_id: Mapped[int] = foreign_key("chat_conversations.id", ondelete="CASCADE")
    user_id: Mapped[int | None] = foreign_key("users.id", ondelete="SET NULL", nullable=True, index=True)
    role: Mapped[MessageRole] = enum_column(MessageRole)
    content: Mapped[str] = mapped_column(LongText)
    model_id: Mapped[int | None] = foreign_key("ai_models.id", ondelete="SET NULL", nullable=True, index=True)
    task_id: Mapped[int | None] = foreign_key("tasks.id", ondelete="SET NULL", nullable=True, index=True)
    # The platform's id for the message (Slack ts, Discord snowflake), to map reactions back.
    platform_message_id: Mapped[str | None] = mapped_column(Key)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    conversation: Mapped[ChatConversation] = relationship(back_populates="messages", lazy="raise")
