"""Keeps `ai_models` and `model_discovery` in step with what every provider actually serves.

`ModelRegistry.sync()` asks each provider for its models and, per provider, in one transaction:
inserts new models (`discovered`), marks missing ones `vanished` (kept for history), notices
`reappeared`, `loaded` and `unloaded`, and records each change in `model_discovery`. Events go to
`on_event` (e.g. `EventBus.publish`) only after the commit, so listeners never see a change the
database does not have. A provider that cannot be reached marks nothing vanished: an unreachable
server is not an empty one.

`list_models` answers from a per-provider cache for `ttl_s` seconds (configurable), so chat
commands and the API do not hit the servers on every request.

Scheduling (APScheduler 3, job functions referenced as "module:function" so a persistent job store
can hold them): `schedule_sync(scheduler, interval_s=…)` adds `scheduled_sync`, which builds the
providers from the database, syncs once and closes everything; listeners registered with
`add_listener` receive its events in the daemon's process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.base import utcnow
from bot.db.models import AiModel, AiProvider, DiscoveryEvent, HealthStatus, ModelDiscovery
from bot.engine.providers.port import LLMProvider, ModelInfo, ProviderError
from bot.engine.providers.router import Deployment
from bot.events import Event
from bot.logs import get_logger

log = get_logger(__name__)

EVENT_TOPIC = "models"
SYNC_JOB_ID = "models.sync"
SYNC_JOB_FUNC = "bot.engine.providers.registry:scheduled_sync"
EventSink = Callable[[Event], None]
_listeners: list[EventSink] = []


@dataclass(frozen=True, slots=True)
class ModelChange:
    """One change a sync noticed."""

    provider: str
    model: str
    event: DiscoveryEvent


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one provider's sync found; `error` is set when the provider could not be asked."""

    provider: str
    models: int = 0
    changes: tuple[ModelChange, ...] = ()
    error: str | None = None

    def of(self, event: DiscoveryEvent) -> list[str]:
        """Model keys with a given change."""
        return [change.model for change in self.changes if change.event == event]


@dataclass
class _Cached:
    models: list[ModelInfo]
    at: float


@dataclass
class ModelRegistry:
    """The model catalogue of a set of providers, cached and mirrored into the database."""

    sessions: async_sessionmaker[AsyncSession]
    providers: Mapping[str, LLMProvider]
    ttl_s: float = 30.0
    on_event: EventSink | None = None
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, _Cached] = field(default_factory=dict)

    async def list_models(self, provider: str, *, refresh: bool = False) -> list[ModelInfo]:
        """A provider's models, from the cache while it is younger than `ttl_s`."""
        cached = self._cache.get(provider)
        if not refresh and cached is not None and self.clock() - cached.at < self.ttl_s:
            return list(cached.models)
        models = await self._client(provider).list_models(refresh=True)
        self._cache[provider] = _Cached(models=list(models), at=self.clock())
        return list(models)

    def deployments(self) -> list[Deployment]:
        """A router deployment for every chat model in the cached lists (embedding models excluded)."""
        return [
            Deployment(provider=self.providers[name], model=info.key)
            for name, cached in self._cache.items()
            if name in self.providers
            for info in cached.models
            if info.model_type != "embedding" and "embedding" not in info.capabilities
        ]

    def invalidate(self, provider: str | None = None) -> None:
        """Forget cached lists (after a load, unload or download)."""
        if provider is None:
            self._cache.clear()
        else:
            self._cache.pop(provider, None)

    async def sync(self) -> list[SyncReport]:
        """Sync every provider; one failing provider does not stop the others."""
        return [await self.sync_provider(name) for name in self.providers]

    async def sync_provider(self, name: str) -> SyncReport:
        """Mirror one provider's models into the database and emit the changes."""
        try:
            models = await self.list_models(name, refresh=True)
        except ProviderError as err:  # expected: servers go down; record it, keep the catalogue
            log.warning("registry.provider_unreachable", provider=name, error=err.message)
            await self._record_health(name, HealthStatus.DOWN, err.message)
            return SyncReport(provider=name, error=err.message)
        changes = await self._apply(name, models)
        for change in changes:
            self._emit(change)
        if changes:
            log.info("registry.synced", provider=name, models=len(models), changes=len(changes))
        return SyncReport(provider=name, models=len(models), changes=tuple(changes))

    async def _apply(self, name: str, models: list[ModelInfo]) -> list[ModelChange]:
        now = utcnow()
        changes: list[ModelChange] = []
        async with self.sessions() as session, session.begin():
            provider = await _provider_row(session, name)
            rows = {
                row.model_key: row
                for row in (await session.scalars(select(AiModel).where(AiModel.provider_id == provider.id))).all()
            }
            seen: set[str] = set()
            for info in models:
                if info.key in seen:
                    continue
                seen.add(info.key)
                row = rows.get(info.key)
                if row is None:
                    row = AiModel(provider_id=provider.id, model_key=info.key, is_loaded=False)
                    session.add(row)
                    changes.append(ModelChange(name, info.key, DiscoveryEvent.DISCOVERED))
                elif row.vanished_at is not None:
                    row.vanished_at = None
                    changes.append(ModelChange(name, info.key, DiscoveryEvent.REAPPEARED))
                elif row.is_loaded != info.loaded:
                    event = DiscoveryEvent.LOADED if info.loaded else DiscoveryEvent.UNLOADED
                    changes.append(ModelChange(name, info.key, event))
                _copy_facts(row, info, now=now)
            for key, row in rows.items():
                if key not in seen and row.vanished_at is None:
                    row.vanished_at = now
                    row.is_loaded = False
                    row.loaded_instance_id = None
                    changes.append(ModelChange(name, key, DiscoveryEvent.VANISHED))
            await session.flush()
            by_key = {row.model_key: row for row in rows.values()}
            by_key.update(
                {
                    row.model_key: row
                    for row in (
                        await session.scalars(select(AiModel).where(AiModel.provider_id == provider.id))
                    ).all()
                }
            )
            for change in changes:
                model_row = by_key.get(change.model)
                session.add(
                    ModelDiscovery(
                        provider_id=provider.id,
                        model_id=model_row.id if model_row is not None else None,
                        model_key=change.model,
                        event=change.event,
                        details=_details(model_row),
                        at=now,
                    )
                )
            provider.health_status = HealthStatus.HEALTHY
            provider.health_detail = None
            provider.last_checked_at = now
        return changes

    async def _record_health(self, name: str, status: HealthStatus, detail: str) -> None:
        async with self.sessions() as session, session.begin():
            provider = await session.scalar(select(AiProvider).where(AiProvider.name == name))
            if provider is not None:
                provider.health_status = status
                provider.health_detail = detail[:500]
                provider.last_checked_at = utcnow()

    def _emit(self, change: ModelChange) -> None:
        event = Event(
            topic=EVENT_TOPIC,
            kind=str(change.event),
            payload={"provider": change.provider, "model": change.model},
        )
        sinks = [self.on_event] if self.on_event is not None else []
        for sink in [*sinks, *_listeners]:
            try:
                sink(event)
            except Exception:  # boundary: a listener's bug must not undo or stop the sync
                log.exception("registry.listener_failed", kind=event.kind)

    def _client(self, name: str) -> LLMProvider:
        try:
            return self.providers[name]
        except KeyError:
            raise ProviderError(f"no provider named {name!r}", hint="see `orchestrator providers list`") from None


async def _provider_row(session: AsyncSession, name: str) -> AiProvider:
    provider = await session.scalar(select(AiProvider).where(AiProvider.name == name))
    if provider is None:
        raise ProviderError(
            f"provider {name!r} is not in the database", hint="add it with `orchestrator providers add`"
        )
    return provider


def _copy_facts(row: AiModel, info: ModelInfo, *, now: Any) -> None:
    row.display_name = (info.display_name or info.key)[:255]
    row.family = info.family[:100] if info.family else None
    row.size_bytes = info.size_bytes
    row.quantization = info.quantization[:64] if info.quantization else None
    row.context_length = info.context_length
    row.capabilities = model_capabilities(info)
    row.is_loaded = info.loaded
    row.loaded_instance_id = info.instance_ids[0][:255] if info.instance_ids else None
    row.last_seen_at = now


def model_capabilities(info: ModelInfo) -> dict[str, Any]:
    """The JSON stored in `ai_models.capabilities`: type, capability flags, parameters."""
    model_type = info.model_type or ("embedding" if "embedding" in info.capabilities else "llm")
    facts: dict[str, Any] = {
        "type": model_type,
        "vision": "vision" in info.capabilities,
        "tool_use": bool({"tool_use", "tools", "trained_for_tool_use"} & info.capabilities),
        "embedding": model_type == "embedding" or "embedding" in info.capabilities,
        "flags": sorted(info.capabilities),
    }
    if info.parameters:
        facts["parameters"] = info.parameters
    return facts


def _details(row: AiModel | None) -> dict[str, Any]:
    if row is None:
        return {}
    return {"size_bytes": row.size_bytes, "quantization": row.quantization, "context_length": row.context_length}


# -- scheduling ------------------------------------------------------------------------------------


def add_listener(sink: EventSink) -> None:
    """Receive the events of scheduled syncs in this process (e.g. the daemon's EventBus.publish)."""
    if sink not in _listeners:
        _listeners.append(sink)


def remove_listener(sink: EventSink) -> None:
    """Stop receiving scheduled-sync events."""
    if sink in _listeners:
        _listeners.remove(sink)


async def scheduled_sync() -> list[SyncReport]:
    """The APScheduler job: sync every enabled provider from the database once."""
    from bot.db.engine import create_engine, session_factory
    from bot.engine.providers.configured import load_providers
    from bot.settings import load_settings

    settings = load_settings()
    engine = create_engine(settings.effective_database_url, settings=settings.database)
    try:
        sessions = session_factory(engine)
        async with sessions() as session:
            configured = await load_providers(session, settings=settings)
        clients = {item.row.name: item.client for item in configured}
        try:
            return await ModelRegistry(sessions=sessions, providers=clients).sync()
        finally:
            for client in clients.values():
                await client.aclose()
    finally:
        await engine.dispose()


def schedule_sync(scheduler: Any, *, interval_s: float = 300.0) -> Any:
    """Add (or replace) the periodic sync on an APScheduler 3 scheduler; returns the job."""
    if interval_s < 5:
        raise ValueError("a model sync more often than every 5 s would hammer the servers")
    return scheduler.add_job(
        SYNC_JOB_FUNC,
        "interval",
        seconds=interval_s,
        id=SYNC_JOB_ID,
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=int(interval_s),
    )
