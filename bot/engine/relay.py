"""Task events between daemons that share one database.

The engine publishes a task's events (plan, steps, streamed text, verdicts, ending) on its own
process's EventBus. When several daemons share a database (MariaDB; docs/queue.md), the daemon
that runs a subtask is often not the one whose chat thread or admin-API WebSocket follows the
task: Slack hands a slash command to one connection, and any daemon may claim the job. The relay
closes that gap:

- **outbound**: this process's task events are written to `task_events`, batched every
  `flush_interval_s` in one transaction. Consecutive streamed-text events of one subtask are
  merged into one row, so a streaming answer costs a row per flush, not per token.
- **inbound**: rows written by other processes are read every `poll_interval_s` and published on
  the local bus as if they happened here (`Event.origin` names the daemon they came from).

Ids are assigned at insert and transactions commit in any order, so a poll can see id 12 before
id 11 commits. A skipped id is remembered as a gap and looked for again for `gap_wait_s` (a
rolled-back insert leaves a gap forever). Each process writes one batch at a time, so one
daemon's events always arrive in their order.

Rows are only a transport: they are deleted after `retention_s`. A follower that misses an event
(a daemon killed between committing a step and flushing its events) still ends, because it
checks the task's row when the task goes quiet (bot/commands/engine_commands.py `follow_task`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, Text, bindparam, delete, func, insert, select, type_coerce
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.aio import cancel_and_wait
from bot.db.base import utcnow
from bot.db.engine import JSONText, read_connection
from bot.db.models import TaskEvent
from bot.engine.queue import JobQueue
from bot.events import Event, EventBus, Subscription
from bot.logs import get_logger

log = get_logger(__name__)

TASK_EVENTS = cast(Table, TaskEvent.__table__)
TEXT_KIND = "subtask.token"
MAX_PAYLOAD_CHARS = 256 * 1024

_INSERT = insert(TASK_EVENTS)
# The payload is read as text and parsed per row: one row that is not JSON (written by hand, or
# by a buggy peer) is skipped with a warning instead of failing every poll from then on.
_COLUMNS = (TASK_EVENTS.c.id, TASK_EVENTS.c.origin, TASK_EVENTS.c.task_id, TASK_EVENTS.c.kind,
            type_coerce(TASK_EVENTS.c.payload, Text).label("payload"), TASK_EVENTS.c.created_at)
_AFTER = (select(*_COLUMNS)
          .where(TASK_EVENTS.c.id > bindparam("after")).order_by(TASK_EVENTS.c.id).limit(bindparam("limit")))
_GAPS = select(*_COLUMNS).where(TASK_EVENTS.c.id.in_(bindparam("ids", expanding=True))).order_by(TASK_EVENTS.c.id)
_NEWEST = select(func.max(TASK_EVENTS.c.id))


def event_rows(events: Sequence[Event], *, origin: str) -> list[dict[str, Any]]:
    """The rows to write for `events`: streamed text merged per subtask, unwritable payloads left out.

    Text events of one subtask are merged until another event of the same task comes between
    them, so a reader sees every event of a task in the order it happened.
    """
    rows: list[dict[str, Any]] = []
    open_text: dict[tuple[int | None, Any], dict[str, Any]] = {}
    for event in events:
        if event.origin is not None:  # came from another daemon: it is already in the table
            continue
        payload = dict(event.payload)
        if event.kind == TEXT_KIND:
            key = (event.task_id, payload.get("subtask_id"))
            merged = open_text.get(key)
            text = str(payload.get("text", ""))
            # Merged only while the row stays well under the payload cap; past it a new row starts.
            if merged is not None and len(merged["text"]) + len(text) <= MAX_PAYLOAD_CHARS // 2:
                merged["text"] += text
                continue
            payload["text"] = text
            open_text[key] = payload
        else:
            for key in [key for key in open_text if key[0] == event.task_id]:
                del open_text[key]
        rows.append({"origin": origin, "task_id": event.task_id, "kind": event.kind, "payload": payload,
                     "created_at": event.at})
    written = []
    for row in rows:
        try:
            text = json.dumps(row["payload"], allow_nan=False, default=str)
        except (TypeError, ValueError) as err:  # NaN, a cycle: MariaDB's JSON check would refuse the batch
            log.warning("task event not relayed: its payload is not JSON", kind=row["kind"], error=str(err))
            continue
        if len(text) > MAX_PAYLOAD_CHARS:
            log.warning("task event not relayed: payload too large", kind=row["kind"], chars=len(text))
            continue
        row["payload"] = JSONText(text)
        written.append(row)
    return written


class EventRelay:
    """Writes this process's task events for other daemons and publishes theirs here."""

    def __init__(self, *, bus: EventBus, db_engine: AsyncEngine, queue: JobQueue, origin: str,
                 flush_interval_s: float = 0.1, poll_interval_s: float = 0.25, retention_s: float = 600.0,
                 gap_wait_s: float = 10.0, batch: int = 500) -> None:
        self.bus = bus
        self.origin = origin
        self.flush_interval_s = flush_interval_s
        self.poll_interval_s = poll_interval_s
        self.retention_s = retention_s
        self.gap_wait_s = gap_wait_s
        self.batch = batch
        self._engine = db_engine
        self._queue = queue
        self._last_id = 0
        self._gaps: dict[int, float] = {}
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._writing: asyncio.Future[None] | None = None
        self._polling = asyncio.Lock()
        self._pruned_at = 0.0

    async def start(self) -> None:
        """Start from the newest row (earlier events are history, not news) and run both directions."""
        async with self._engine.connect() as connection:
            self._last_id = int((await connection.execute(_NEWEST)).scalar() or 0)
        self._subscription = self.bus.subscribe(topics={"task"}, maxsize=100_000)
        self._tasks = [asyncio.create_task(self._outbound(), name="event-relay-out"),
                       asyncio.create_task(self._inbound(), name="event-relay-in")]

    async def stop(self) -> None:
        """Stop both directions, then write what is still buffered (the engine has stopped by now)."""
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._writing is not None:  # a batch being written when the loop stopped: let it land
            with contextlib.suppress(DBAPIError, OSError):
                await self._writing
        if self._subscription is not None:
            pending = self._subscription.drain()
            self._subscription.close()
            self._subscription = None
            with contextlib.suppress(DBAPIError, OSError):
                await self._write(pending)

    # -- outbound -----------------------------------------------------------------------------
    async def _outbound(self) -> None:
        assert self._subscription is not None
        while True:
            # Sleep first, then take what came: stopping during the sleep loses nothing.
            await asyncio.sleep(self.flush_interval_s)
            events = self._subscription.drain()
            if not events:
                continue
            self._writing = asyncio.ensure_future(self._write(events))
            try:
                # Shielded: stopping mid-write lets the transaction finish (stop() waits for it)
                # instead of rolling back a batch that would then be written twice or never.
                await asyncio.shield(self._writing)
            except (DBAPIError, OSError) as err:  # the database is away: live events are lost, tasks are not
                log.warning("could not relay task events", events=len(events), error=str(err)[:200])
            except Exception:  # the loop's boundary: a bug here must not end relaying for the daemon's life
                log.exception("relaying task events failed", events=len(events))
            self._writing = None

    async def _write(self, events: Sequence[Event]) -> None:
        rows = event_rows(events, origin=self.origin)
        if not rows:
            return
        async with self._queue.transaction() as connection:
            await connection.execute(_INSERT, rows)

    # -- inbound ------------------------------------------------------------------------------
    async def _inbound(self) -> None:
        while True:
            try:
                full = await self.poll()
                if time.monotonic() - self._pruned_at >= 60.0:
                    await self.prune()
            except (DBAPIError, OSError) as err:
                log.warning("could not read relayed task events", error=str(err)[:200])
                full = False
            except Exception:  # the loop's boundary: a bug here must not end relaying for the daemon's life
                log.exception("relaying task events failed; trying again")
                full = False
            if not full:
                await asyncio.sleep(self.poll_interval_s)

    async def poll(self) -> bool:
        """Publish the rows other daemons wrote since the last poll; True when a whole batch came."""
        async with self._polling:  # two polls at once would both publish the rows after `_last_id`
            return await self._poll()

    async def _poll(self) -> bool:
        now = time.monotonic()
        # In-loop on a SQLite file (no thread hops, a few times a second per process), else pooled.
        async with read_connection(self._engine) as connection:
            rows = list(await connection.execute(_AFTER, {"after": self._last_id, "limit": self.batch}))
            found_gaps = []
            if self._gaps:
                found_gaps = list(await connection.execute(_GAPS, {"ids": sorted(self._gaps)}))
        for row in found_gaps:
            self._gaps.pop(int(row.id), None)
            self._publish(row)
        self._gaps = {gap: until for gap, until in self._gaps.items() if until > now}
        for row in rows:
            row_id = int(row.id)
            for missing in range(self._last_id + 1, row_id):
                if len(self._gaps) < 10_000:
                    self._gaps[missing] = now + self.gap_wait_s
            self._last_id = max(self._last_id, row_id)
            self._publish(row)
        return len(rows) >= self.batch

    def _publish(self, row: Any) -> None:
        if row.origin == self.origin:
            return
        try:
            payload = json.loads(row.payload)
        except (TypeError, ValueError):
            payload = None
        if not isinstance(payload, dict):
            log.warning("relayed task event skipped: its payload is not a JSON object", id=row.id, kind=row.kind)
            return
        self.bus.publish(Event(topic="task", kind=str(row.kind), payload=payload,
                               task_id=None if row.task_id is None else int(row.task_id), at=row.created_at,
                               origin=str(row.origin)))

    async def prune(self) -> int:
        """Delete rows older than the retention (any daemon may; each batch is a short transaction)."""
        self._pruned_at = time.monotonic()
        cutoff = utcnow() - timedelta(seconds=self.retention_s)
        oldest = select(TASK_EVENTS.c.id).where(TASK_EVENTS.c.created_at < cutoff).order_by(TASK_EVENTS.c.id)
        async with self._engine.connect() as connection:
            ids = [int(row[0]) for row in await connection.execute(oldest.limit(5000))]
        if not ids:
            return 0
        async with self._queue.transaction() as connection:
            await connection.execute(delete(TASK_EVENTS).where(TASK_EVENTS.c.id.in_(ids)))
        return len(ids)
