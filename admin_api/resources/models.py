"""Models the providers offer (discovered automatically; registrable and switchable by hand)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from admin_api.resource import ApiModel, Filter, Resource, crud_routes
from admin_api.resources._common import Id, JsonObject, Key, Timestamps
from bot.db.models import AiModel

ContextLength = Annotated[int, Field(ge=1, le=10_000_000)]


class ModelCreate(ApiModel):
    """Register a model a provider offers (discovery does this on its own)."""

    provider_id: Id
    model_key: Key
    display_name: Annotated[str, Field(max_length=255)] = ""
    family: Annotated[str, Field(max_length=100)] | None = None
    size_bytes: Annotated[int, Field(ge=0, le=2**62)] | None = None
    quantization: Annotated[str, Field(max_length=64)] | None = None
    context_length: ContextLength | None = None
    capabilities: JsonObject = Field(default_factory=dict)
    is_enabled: bool = True


class ModelUpdate(ApiModel):
    """Fields an administrator may change (load state is changed by load/unload)."""

    display_name: Annotated[str, Field(max_length=255)] | None = None
    family: Annotated[str, Field(max_length=100)] | None = None
    context_length: ContextLength | None = None
    capabilities: JsonObject | None = None
    is_enabled: bool | None = None


class ModelRead(Timestamps):
    """A model as stored, with its load state."""

    provider_id: int
    model_key: str
    display_name: str
    family: str | None
    size_bytes: int | None
    quantization: str | None
    context_length: int | None
    capabilities: dict[str, object]
    is_enabled: bool
    is_loaded: bool
    loaded_instance_id: str | None
    last_seen_at: datetime | None
    last_used_at: datetime | None
    vanished_at: datetime | None


MODELS = Resource(
    name="models", tag="models", model=AiModel, read=ModelRead, create=ModelCreate, update=ModelUpdate,
    sort_fields=("id", "model_key", "created_at"),
    filters={
        "provider_id": Filter("provider_id", int),
        "is_loaded": Filter("is_loaded", bool),
        "is_enabled": Filter("is_enabled", bool),
        "family": Filter("family", str),
        "key_contains": Filter("model_key", str, "contains"),
    },
)
routes = crud_routes(MODELS)
