"""Periodic knowledge synchronisation inside the daemon.

A source opts in with `settings.sync_interval_minutes` (set through the API). One APScheduler job
(as the engine's model sync) wakes every `[knowledge] schedule_check_s`, asks which sources are
due and syncs them one at a time; a failing source is recorded on its row and retried after its
interval, never blocking the others. Scheduled syncs embed with the daemon's knowledge embedder
and open linked credentials with the daemon's vault.
"""

from __future__ import annotations

from typing import Any

from bot.knowledge.embedder import KnowledgeEmbedder, build_embedder
from bot.knowledge.errors import KnowledgeSyncError
from bot.knowledge.sync import due_sources, sync_source
from bot.logs import get_logger

_log = get_logger(__name__)


async def run_due_syncs(sessions: Any, settings: Any, *, embedder: Any = None, vault: Any = None) -> list[int]:
    """Sync every due source; the ids that synced successfully."""
    synced: list[int] = []
    for source_id in await due_sources(sessions):
        try:
            await sync_source(sessions, source_id, settings=settings.knowledge, embedder=embedder, vault=vault)
        except KnowledgeSyncError:
            continue  # recorded on the source and logged by sync_source
        except Exception:  # scheduler boundary: one broken source must not stop the next ones
            _log.exception("knowledge.scheduled_sync_crashed", source_id=source_id)
            continue
        synced.append(source_id)
    return synced


class KnowledgeSyncComponent:
    """The daemon component that runs due knowledge syncs on a timer.

    It builds the daemon's knowledge embedder once (bot/knowledge/embedder.py, over the engine's
    connected providers) and publishes it as `runtime.knowledge_embedder`, so the admin API's
    semantic search and its sync endpoint embed with the same model as the scheduled syncs.
    """

    name = "knowledge_sync"

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._scheduler: Any = None
        self.embedder: KnowledgeEmbedder | None = None

    async def run_once(self) -> list[int]:
        """One round of due syncs (what the timer runs)."""
        runtime = self._runtime
        return await run_due_syncs(runtime.session_factory, runtime.settings, embedder=self.embedder,
                                   vault=runtime.vault)

    async def _build_embedder(self) -> None:
        runtime = self._runtime
        engine_runtime = getattr(runtime, "engine_runtime", None)
        providers = engine_runtime.providers if engine_runtime is not None else {}
        choice = await build_embedder(runtime.settings, runtime.session_factory, providers=providers)
        self.embedder = choice.embedder
        runtime.knowledge_embedder = choice.embedder
        if choice.embedder is not None:
            _log.info("knowledge.embedder_ready", model=choice.embedder.model, source=choice.embedder.source)
        elif runtime.settings.knowledge.embedding_model is not None:
            _log.warning("knowledge.embeddings_disabled", reason=choice.skipped)

    async def start(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        await self._build_embedder()
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_job(self.run_once, "interval", seconds=self._runtime.settings.knowledge.schedule_check_s,
                                id="knowledge.sync", coalesce=True, max_instances=1)
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self.embedder is not None:
            await self.embedder.aclose()
            self.embedder = None
