"""Models the providers offer (discovered automatically; registrable and switchable by hand)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from admin_api.endpoint import Ctx, endpoint
from admin_api.problems import ApiProblem, Conflict, NotFound, Unavailable, UpstreamFailed, ValidationFailed
from admin_api.resource import ApiModel, Filter, Resource, crud_routes, get_row
from admin_api.resources._common import Id, JsonObject, Key, Timestamps
from admin_api.state import BUS, SESSIONS, SETTINGS
from bot.db.base import utcnow
from bot.db.models import AiModel, AiProvider
from bot.engine.providers.port import ProviderError
from bot.events import Event
from bot.vault import VaultError

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


class LoadRequest(ApiModel):
    """Load options; omitted ones keep the server's defaults."""

    context_length: ContextLength | None = None
    flash_attention: bool | None = None
    keep_alive_s: Annotated[float, Field(ge=0, le=86_400 * 7)] | None = None


class RecommendQuery(BaseModel):
    """A task type (chat, code, reasoning, planning, validation, summarise, translate, extract, vision,
    embedding) and optionally the providers to choose from."""

    model_config = ConfigDict(extra="forbid")
    task_type: Annotated[str, Field(min_length=1, max_length=32)]
    provider: Annotated[str, Field(max_length=100)] | None = None
    limit: Annotated[int, Field(ge=1, le=50)] = 5


class RecommendationRead(BaseModel):
    """A ranked model and the one-line reason."""

    provider: str
    model: str
    score: float
    reason: str


class Recommendations(BaseModel):
    """Best first."""

    task_type: str
    items: list[RecommendationRead]


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
routes = web.RouteTableDef()


def _provider_problem(err: ProviderError) -> ApiProblem:
    from bot.engine.providers.port import ModelDoesNotFitError, ModelNotFoundError

    if isinstance(err, ModelNotFoundError):
        return NotFound(f"the provider does not know this model: {err.message}")
    if isinstance(err, ModelDoesNotFitError):
        return Conflict(f"the model does not fit in memory: {err.message}")
    return UpstreamFailed(f"the provider failed: {err.message}")


async def _with_client(ctx: Ctx, model_id: int, action: Any) -> BaseModel:
    """Build the model's provider client from its row, run `action`, store the new load state."""
    from bot.engine.providers.configured import load_providers

    settings = ctx.request.app[SETTINGS]
    async with ctx.request.app[SESSIONS]() as session:
        row = await get_row(session, MODELS, model_id)
        provider = await session.get(AiProvider, row.provider_id)
        assert provider is not None  # the foreign key guarantees it
        try:
            configured = (await load_providers(session, settings=settings, names=[provider.name]))[0]
        except (ProviderError, VaultError) as err:
            raise Unavailable(f"cannot build a client for provider {provider.name!r}: {err.message}") from None
        try:
            await action(configured.client, row)
        except ProviderError as err:
            raise _provider_problem(err) from None
        finally:
            await configured.client.aclose()
        row.last_used_at = utcnow()
        await session.commit()
        await session.refresh(row)
    ctx.request.app[BUS].publish(Event(topic="model", kind="loaded" if row.is_loaded else "unloaded",
                                       payload={"model_id": row.id, "model": row.model_key}))
    return MODELS.serialise(row)


@endpoint(routes, "POST", "/models/{id}/load", summary="Load the model on its provider", tag="models",
          scope="write", body=LoadRequest, response=ModelRead,
          problems=(NotFound, Conflict, UpstreamFailed, Unavailable))
async def load_model(ctx: Ctx) -> BaseModel:
    """Ask the provider to load the model (it checks memory first) and record the instance."""
    from bot.engine.providers.port import LoadConfig

    options = ctx.body_as(LoadRequest)

    async def load(client: Any, row: AiModel) -> None:
        instance = await client.load(row.model_key, LoadConfig(
            context_length=options.context_length, flash_attention=options.flash_attention,
            keep_alive_s=options.keep_alive_s))
        row.is_loaded, row.loaded_instance_id = True, instance.instance_id

    return await _with_client(ctx, ctx.path_int(), load)


@endpoint(routes, "POST", "/models/{id}/unload", summary="Unload the model from its provider", tag="models",
          scope="write", response=ModelRead, problems=(NotFound, UpstreamFailed, Unavailable))
async def unload_model(ctx: Ctx) -> BaseModel:
    """Ask the provider to unload the model and record that it is not loaded."""

    async def unload(client: Any, row: AiModel) -> None:
        await client.unload(row.model_key, instance_id=row.loaded_instance_id)
        row.is_loaded, row.loaded_instance_id = False, None

    return await _with_client(ctx, ctx.path_int(), unload)


@endpoint(routes, "GET", "/models/recommend", summary="Recommend models for a task type", tag="models",
          scope="read", query=RecommendQuery, response=Recommendations, problems=(ValidationFailed,))
async def recommend_models(ctx: Ctx) -> Recommendations:
    """Rank the catalogue's models for the task by fit, size, locality, load state and track record."""
    from bot.engine.providers.recommend import normalise_task, recommend

    query = ctx.query_as(RecommendQuery)
    try:
        task = normalise_task(query.task_type)
    except ProviderError as err:
        raise ValidationFailed(err.message, extra={"errors": [
            {"loc": ["query", "task_type"], "msg": str(err), "type": "enum"}]}) from None
    async with ctx.request.app[SESSIONS]() as session:
        ranked = await recommend(session, task, providers=[query.provider] if query.provider else None,
                                 limit=query.limit)
    return Recommendations(task_type=task, items=[
        RecommendationRead(provider=r.provider, model=r.model, score=r.score, reason=r.reason) for r in ranked])


crud_routes(MODELS, routes)
