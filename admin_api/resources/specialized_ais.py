"""Specialised AIs: roles with their system prompt and preferred model."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from admin_api.resource import ApiModel, Filter, Resource, crud_routes
from admin_api.resources._common import Id, Name, ShortKey, Text, Timestamps
from bot.db.models import AiRole, SpecializedAi

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]


class SpecializedAiCreate(ApiModel):
    """A new role."""

    name: Name
    role: AiRole
    description: Text = ""
    system_prompt: Annotated[str, Field(min_length=1, max_length=65_535)]
    category: ShortKey | None = None
    preferred_model_id: Id | None = None
    temperature: Temperature = 0.2
    max_tokens: MaxTokens | None = None
    is_active: bool = True


class SpecializedAiUpdate(ApiModel):
    """Fields to change."""

    name: Name | None = None
    role: AiRole | None = None
    description: Text | None = None
    system_prompt: Annotated[str, Field(min_length=1, max_length=65_535)] | None = None
    category: ShortKey | None = None
    preferred_model_id: Id | None = None
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    is_active: bool | None = None


class SpecializedAiRead(Timestamps):
    """A role as stored."""

    name: str
    role: AiRole
    description: str
    system_prompt: str
    category: str | None
    preferred_model_id: int | None
    temperature: float
    max_tokens: int | None
    is_active: bool


SPECIALIZED_AIS = Resource(
    name="specialized-ais", tag="specialized AIs", model=SpecializedAi, read=SpecializedAiRead,
    create=SpecializedAiCreate, update=SpecializedAiUpdate, singular="specialised AI",
    sort_fields=("id", "name", "created_at"),
    filters={"role": Filter("role", AiRole), "category": Filter("category", str),
             "is_active": Filter("is_active", bool)},
)
routes = crud_routes(SPECIALIZED_AIS)
