"""Periodic knowledge synchronisation inside the daemon.

A source opts in with `settings.sync_interval_minutes` (set through the API). One APScheduler job
(as the engine's model sync) wakes every `[knowledge] schedule_check_s`, asks which sources are
due and syncs them one at a time; a failing source is recorded on its row and retried after its
interval, never blocking the others.
"""

from __future__ import annotations

from typing import Any

from bot.knowledge.errors import KnowledgeSyncError
from bot.knowledge.sync import due_sources, sync_source
from bot.logs import get_logger

_log = get_logger(__name__)


async def run_due_syncs(sessions: Any, settings: Any, *, embedder: Any = None) -> list[int]:
    """Sync every due source; the ids that synced successfully."""
    synced: list[int] = []
    for source_id in await due_sources(sessions):
        try:
            await sync_source(sessions, source_id, settings=settings.knowledge, embedder=embedder)
        except KnowledgeSyncError:
            continue  # recorded on the source and logged by sync_source
        except Exception:  # scheduler boundary: one broken source must not stop the next ones
            _log.exception("knowledge.scheduled_sync_crashed", source_id=source_id)
            continue
        synced.append(source_id)
    return synced


class KnowledgeSyncComponent:
    """The daemon component that runs due knowledge syncs on a timer."""

    name = "knowledge_sync"

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._scheduler: Any = None

    async def _tick(self) -> None:
        runtime = self._runtime
        await run_due_syncs(runtime.session_factory, runtime.settings)

    async def start(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_job(self._tick, "interval", seconds=self._runtime.settings.knowledge.schedule_check_s,
                                id="knowledge.sync", coalesce=True, max_instances=1)
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
