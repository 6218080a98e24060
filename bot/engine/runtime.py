"""Builds the engine from the database: providers → model registry → router → queue → worker.

Used by the daemon (bot/app.py) and by `orchestrator task run --wait`. When no configured LLM
server answers, the embedded llama.cpp provider (two small models of different families) is
added so a fresh install can still think, and the daemon says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db.engine import is_sqlite
from bot.db.models import AiModel, AiProvider, ProviderKind
from bot.engine.embeddings import Embedder, LexicalEmbedder
from bot.engine.orchestrator import Engine
from bot.engine.providers.configured import load_providers
from bot.engine.providers.port import LLMProvider
from bot.engine.providers.registry import ModelRegistry
from bot.engine.providers.router import Deployment, Router, RouterConfig
from bot.engine.providers.usage import CreditRecorder
from bot.engine.queue import JobQueue, Worker, default_worker_id
from bot.engine.relay import EventRelay
from bot.events import EventBus
from bot.logs import get_logger
from bot.settings import RouterSettings, Settings

log = get_logger(__name__)
EMBEDDED_PROVIDER = "embedded"


def router_config(settings: RouterSettings) -> RouterConfig:
    """The router's policy from the `[router]` settings section (validated there)."""
    return RouterConfig(
        retries_per_group=settings.retries_per_group, backoff_base_s=settings.backoff_base_s,
        backoff_max_s=settings.backoff_max_s, max_wait_s=settings.max_wait_s, cooldown_s=settings.cooldown_s,
        failure_window_s=settings.failure_window_s, allowed_fails=settings.allowed_fails,
        failure_ratio=settings.failure_ratio, first_token_timeout_s=settings.first_token_timeout_s,
        total_timeout_s=settings.total_timeout_s,
        fallbacks={group: tuple(chain) for group, chain in settings.fallbacks.items()},
    )


@dataclass
class EngineRuntime:
    """Everything the engine needs, started and stopped together."""

    settings: Settings
    db_engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    bus: EventBus | None = None
    worker_id: str | None = None
    embedder: Embedder | None = None
    admission: Callable[[], bool] | None = None
    monitor_state: Any = None
    providers: dict[str, LLMProvider] = field(default_factory=dict)
    router: Router | None = None
    registry: ModelRegistry | None = None
    queue: JobQueue | None = None
    engine: Engine | None = None
    worker: Worker | None = None
    _worker_task: asyncio.Task[None] | None = None
    relay: EventRelay | None = None
    # An `orchestrator worker` process: nobody follows tasks here, so its events only matter to
    # the daemons that do, and "auto" relays them whatever the database.
    worker_only: bool = False
    notices: list[str] = field(default_factory=list)

    async def start(self, *, run_worker: bool = True) -> None:
        """Connect providers, sync their models, and (optionally) start claiming work."""
        self.router = Router(config=router_config(self.settings.router), on_call=CreditRecorder(self.sessions))
        await self._connect_providers()
        self.registry = ModelRegistry(sessions=self.sessions, providers=self.providers,
                                      on_event=self.bus.publish if self.bus else None)
        await self.registry.sync()
        await self.refresh_router()
        self.queue = JobQueue(self.db_engine)
        assert self.router is not None
        if self.embedder is None and self.settings.engine.divergence_embedder == "lexical":
            self.embedder = LexicalEmbedder()
        self.engine = Engine(session_factory=self.sessions, router=self.router, queue=self.queue,
                             settings=self.settings.engine, bus=self.bus, embedder=self.embedder,
                             monitor_state=self.monitor_state)
        limits = await self._provider_limits()
        # Each provider's parallel slots cap its model calls (a subtask's choice of model happens
        # inside its job, so the queue's per-provider job slots cannot see it).
        self.router.limit_providers(limits)
        if run_worker:
            self.worker = Worker(queue=self.queue, handlers=self.engine.handlers, worker_id=self.worker_id,
                                 concurrency=self.settings.engine.max_concurrency, provider_limits=limits,
                                 on_event=self.engine.on_queue_event, admission=self.admission)
        if self.bus is not None and self.relays_events():
            # Listening before the worker claims anything: a resumed job's first events are relayed too.
            self.relay = EventRelay(bus=self.bus, db_engine=self.db_engine, queue=self.queue,
                                    origin=self.worker.worker_id if self.worker else default_worker_id())
            await self.relay.start()
        if self.worker is not None:
            self._worker_task = asyncio.create_task(self.worker.run(), name="engine-worker")

    def relays_events(self) -> bool:
        """Whether task events go through the database to other daemons (`engine.relay_events`)."""
        setting = self.settings.engine.relay_events
        if setting != "auto":
            return setting == "on"
        return self.worker_only or self.settings.engine.worker_processes > 0 or not is_sqlite(self.db_engine)

    async def _connect_providers(self) -> None:
        async with self.sessions() as session:
            configured = await load_providers(session, settings=self.settings)
        for item in configured:
            if item.row.kind == ProviderKind.EMBEDDED:
                await item.client.aclose()  # started below only if no real server answers
            else:
                self.providers[item.row.name] = item.client
        healthy = False
        for name, client in self.providers.items():
            status = await client.health()
            log.info("provider checked", provider=name, ok=status.ok, detail=status.detail)
            healthy = healthy or status.ok
        if not healthy:
            await self._add_embedded()

    async def _add_embedded(self) -> None:
        """Fall back to the built-in llama.cpp models when no configured server answers."""
        from bot.engine.providers.embedded import EmbeddedProvider, find_models

        if not find_models(models_dir=self.settings.data_dir / "models"):
            self.notices.append("no LLM server answers and the embedded models are not installed: "
                                "install them with scripts/run.sh or start LM Studio/Ollama")
            return
        async with self.sessions() as session, session.begin():
            row = await session.scalar(select(AiProvider).where(AiProvider.name == EMBEDDED_PROVIDER))
            if row is None:
                session.add(AiProvider(name=EMBEDDED_PROVIDER, kind=ProviderKind.EMBEDDED, base_url="embedded://",
                                       is_local=True, is_enabled=True, priority=-100, max_concurrency=1))
        provider = EmbeddedProvider(name=EMBEDDED_PROVIDER, data_dir=self.settings.data_dir)
        self.providers[EMBEDDED_PROVIDER] = provider
        self.notices.append(provider.notice())
        log.warning("using the embedded model", notice=provider.notice())

    async def refresh_router(self) -> None:
        """Route to every present model of every connected provider."""
        async with self.sessions() as session:
            rows = (await session.execute(
                select(AiModel.model_key, AiProvider.name)
                .join(AiProvider, AiProvider.id == AiModel.provider_id)
                .where(AiModel.vanished_at.is_(None), AiModel.is_enabled.is_(True), AiProvider.is_enabled.is_(True))
            )).all()
        assert self.router is not None
        for model_key, provider_name in rows:
            provider = self.providers.get(provider_name)
            if provider is not None:
                self.router.add(Deployment(provider=provider, model=model_key))

    async def sync_models(self) -> None:
        """Refresh every provider's catalogue and route to models that appeared."""
        if self.registry is not None:
            await self.registry.sync()
            await self.refresh_router()

    async def _provider_limits(self) -> dict[str, int]:
        async with self.sessions() as session:
            rows = (await session.execute(select(AiProvider.name, AiProvider.max_concurrency))).all()
        return {name: limit for name, limit in rows if limit}

    async def stop(self) -> None:
        """Drain the worker, then close provider connections and the embedded server."""
        if self.worker is not None:
            await self.worker.stop(drain_timeout_s=min(30.0, self.settings.shutdown_timeout_s))
        if self._worker_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        if self.relay is not None:  # after the worker, so its last events still reach the others
            await self.relay.stop()
        for provider in self.providers.values():
            await provider.aclose()
