"""The engine's workers as an operator sees them: running, silent or stopped.

One reading of `queue_workers` for `orchestrator workers`, the admin API's `GET /workers` and
the `orchestrator_queue_workers` gauge, so the three never disagree about who is alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.base import utcnow
from bot.db.models import QueueWorker
from bot.engine.queue.store import DEFAULT_LEASE_S

WorkerStateName = Literal["running", "silent", "stopped"]


@dataclass(frozen=True)
class WorkerState:
    """One worker (a daemon or an `orchestrator worker` process) and whether it is alive.

    `running` while its heartbeat (every 10 s) is younger than a lease; `silent` past that
    (killed, or its host is gone: its jobs are reclaimed when their leases expire); `stopped`
    once it shut down cleanly.
    """

    id: str
    host: str
    pid: int
    concurrency: int
    state: WorkerStateName
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None


def state_of(worker: QueueWorker, now: datetime) -> WorkerStateName:
    """running / silent / stopped, from the row and the time (see WorkerState)."""
    if worker.stopped_at is not None:
        return "stopped"
    return "running" if (now - worker.heartbeat_at).total_seconds() < DEFAULT_LEASE_S else "silent"


async def list_workers(session: AsyncSession, *, include_stopped: bool = False) -> list[WorkerState]:
    """The workers, oldest first; stopped ones only when asked (they stay in the table)."""
    rows = (await session.scalars(select(QueueWorker).order_by(QueueWorker.started_at, QueueWorker.id))).all()
    now = utcnow()
    listed = []
    for row in rows:
        state = state_of(row, now)
        if state == "stopped" and not include_stopped:
            continue
        listed.append(WorkerState(id=row.id, host=row.hostname, pid=row.pid, concurrency=row.concurrency,
                                  state=state, started_at=row.started_at, heartbeat_at=row.heartbeat_at,
                                  stopped_at=row.stopped_at))
    return listed
