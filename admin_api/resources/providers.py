"""LLM servers the engine may call."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from admin_api.resource import ApiModel, Filter, Resource, crud_routes
from admin_api.resources._common import Id, JsonObject, Name, Priority, Timestamps, Url
from bot.db.models import AiProvider, HealthStatus, ProviderKind

Concurrency = Annotated[int, Field(ge=1, le=64)]


class ProviderCreate(ApiModel):
    """A new provider; its API token, if any, is a credential referenced by id."""

    name: Name
    kind: ProviderKind
    base_url: Url
    credential_id: Id | None = None
    is_enabled: bool = True
    is_local: bool = True
    priority: Priority = 0
    max_concurrency: Concurrency = 2
    settings: JsonObject = Field(default_factory=dict)


class ProviderUpdate(ApiModel):
    """Fields to change."""

    name: Name | None = None
    base_url: Url | None = None
    credential_id: Id | None = None
    is_enabled: bool | None = None
    is_local: bool | None = None
    priority: Priority | None = None
    max_concurrency: Concurrency | None = None
    settings: JsonObject | None = None


class ProviderRead(Timestamps):
    """A provider as stored, with its last health check."""

    name: str
    kind: ProviderKind
    base_url: str
    credential_id: int | None
    is_enabled: bool
    is_local: bool
    priority: int
    max_concurrency: int
    settings: dict[str, object]
    health_status: HealthStatus
    health_detail: str | None
    last_checked_at: datetime | None


PROVIDERS = Resource(
    name="providers", tag="providers", model=AiProvider, read=ProviderRead, create=ProviderCreate,
    update=ProviderUpdate, sort_fields=("id", "name", "priority", "created_at"),
    filters={
        "kind": Filter("kind", ProviderKind),
        "is_enabled": Filter("is_enabled", bool),
        "health_status": Filter("health_status", HealthStatus),
        "name_contains": Filter("name", str, "contains"),
    },
)
routes = crud_routes(PROVIDERS)
