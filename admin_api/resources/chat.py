"""Chat conversations (one per platform thread) and their messages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from aiohttp import web
from pydantic import Field

from admin_api.resource import ApiModel, Filter, ReadModel, Resource, crud_routes
from admin_api.resources._common import Id, Key, ShortKey, Timestamps
from bot.db.models import ChatConversation, ChatMessage, MessageRole

routes = web.RouteTableDef()


class ConversationCreate(ApiModel):
    """A conversation (the platforms create theirs; the API may open one, e.g. for the console)."""

    platform: ShortKey
    channel_id: Key
    thread_id: Annotated[str, Field(max_length=255)] = ""
    title: Annotated[str, Field(max_length=255)] = ""
    language: Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z]{2,4})?$")] | None = None
    specialized_ai_id: Id | None = None
    user_id: Id | None = None


class ConversationUpdate(ApiModel):
    """Fields to change."""

    title: Annotated[str, Field(max_length=255)] | None = None
    language: Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z]{2,4})?$")] | None = None
    specialized_ai_id: Id | None = None


class ConversationRead(Timestamps):
    """A conversation."""

    user_id: int | None
    platform: str
    channel_id: str
    thread_id: str
    title: str
    language: str | None
    specialized_ai_id: int | None
    last_message_at: datetime | None


CONVERSATIONS = Resource(
    name="chat/conversations", tag="chat", model=ChatConversation, read=ConversationRead,
    create=ConversationCreate, update=ConversationUpdate, singular="conversation",
    sort_fields=("id", "created_at"),
    filters={"platform": Filter("platform", str), "user_id": Filter("user_id", int),
             "channel_id": Filter("channel_id", str)},
)
crud_routes(CONVERSATIONS, routes)


class MessageCreate(ApiModel):
    """A message added to a conversation (e.g. an operator's note or an imported history)."""

    conversation_id: Id
    role: MessageRole
    content: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    user_id: Id | None = None
    model_id: Id | None = None
    task_id: Id | None = None
    platform_message_id: Annotated[str, Field(max_length=255)] | None = None


class MessageRead(ReadModel):
    """A message."""

    id: int
    conversation_id: int
    user_id: int | None
    role: MessageRole
    content: str
    model_id: int | None
    task_id: int | None
    platform_message_id: str | None
    created_at: datetime


MESSAGES = Resource(
    name="chat/messages", tag="chat", model=ChatMessage, read=MessageRead, create=MessageCreate,
    singular="message", sort_fields=("id", "created_at"),
    filters={"conversation_id": Filter("conversation_id", int), "role": Filter("role", MessageRole),
             "task_id": Filter("task_id", int), "since": Filter("created_at", datetime, "ge"),
             "until": Filter("created_at", datetime, "le")},
)
crud_routes(MESSAGES, routes)
