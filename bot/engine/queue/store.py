"""JobQueue: every state change of a durable job, each one short transaction.

Claiming differs per backend because SQLite ignores `FOR UPDATE`: on MariaDB a claimer selects
candidates with `FOR UPDATE SKIP LOCKED` (concurrent claimers skip each other's rows instead of
waiting), on SQLite every queue transaction starts with `BEGIN IMMEDIATE`, which takes the single
write lock before reading, so two claimers can never read the same queued rows. Every write that a
lease holder makes (complete, fail, release, checkpoint, step) is an UPDATE fenced on
(id, status = running, lease_owner, fence): once a lease is reclaimed the stale holder's statement
matches nothing, so a result is never written twice.

On SQLite all of a process's queue writes go through one in-loop connection (bot.db.engine.
sqlite_writer) under one asyncio lock; steps and successes of concurrent jobs are group-committed
(one transaction, one executemany per statement), and each job's deferred rows ride its next
durable write. See docs/queue.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Table, and_, bindparam, delete, func, literal, or_, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.sql import Executable

from bot.db.base import utcnow
from bot.db.direct import data_version, execute_dml, execute_sql, fetch, flush_pending
from bot.db.engine import JSONText, inline_sqlite_connection, is_sqlite, lazy_reads, raw_readers, sqlite_writer
from bot.db.models.queue import (
    CHECKPOINT_PARTIAL,
    CHECKPOINT_STEP,
    JOB_CANCELLED,
    JOB_DEAD,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    Job,
    JobCheckpoint,
    QueueWorker,
)
from bot.engine.queue.errors import JobPayloadError, LeaseLostError, UnknownJobError
from bot.logs import get_logger

log = get_logger(__name__)

JOBS = cast(Table, Job.__table__)
CHECKPOINTS = cast(Table, JobCheckpoint.__table__)
WORKERS = cast(Table, QueueWorker.__table__)
# How long a claim holds a job without a heartbeat; workers beat every third of it.
DEFAULT_LEASE_S = 30.0

MAX_KEY_LENGTH = 255
MAX_KIND_LENGTH = 64
MAX_PROVIDER_LENGTH = 64
# Candidates fetched per requested job when provider limits may filter some out.
_OVERFETCH = 4
# SQLite allows 32766 bound parameters; keep IN lists well below, and MariaDB packets small.
_IN_CHUNK = 500
# An orphaned job (its worker died) is dead-lettered after this many × max_attempts claims.
ORPHAN_CLAIM_FACTOR = 3

_T = TypeVar("_T")
CommitHook = Callable[[AsyncSession], Awaitable[None]]
# Runs once per group commit with the items every job of the group registered for it (see
# JobContext.on_commit_batch): one statement for many jobs' rows instead of one per job.
BatchHook = Callable[[AsyncSession, list[Any]], Awaitable[None]]
BoundaryHook = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to enqueue: the idempotency key makes enqueuing the same work twice a no-op."""

    kind: str
    idempotency_key: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    provider: str | None = None
    task_id: int | None = None
    subtask_id: int | None = None
    max_attempts: int = 5
    timeout_s: int = 1800
    available_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of holding a job: every fenced write presents it."""

    job_id: int
    worker_id: str
    fence: int


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this worker now holds, with everything a handler needs."""

    id: int
    kind: str
    idempotency_key: str
    payload: dict[str, Any]
    priority: int
    provider: str | None
    task_id: int | None
    subtask_id: int | None
    attempts: int
    max_attempts: int
    fence: int
    timeout_s: int
    worker_id: str

    @property
    def lease(self) -> Lease:
        """The fencing proof for this attempt."""
        return Lease(job_id=self.id, worker_id=self.worker_id, fence=self.fence)


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a worker asks a claim for: up to `limit` jobs of `kinds`, within its provider slots."""

    worker_id: str
    limit: int
    kinds: tuple[str, ...] | None = None
    provider_slots: Mapping[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing can be claimed: no slot, or no kind."""
        return self.limit <= 0 or (self.kinds is not None and not self.kinds)


@dataclass(frozen=True, slots=True)
class JobView:
    """A read-only snapshot of a job row, for status pages and tests."""

    id: int
    kind: str
    idempotency_key: str
    status: str
    priority: int
    provider: str | None
    task_id: int | None
    subtask_id: int | None
    attempts: int
    max_attempts: int
    fence: int
    lease_owner: str | None
    result: dict[str, Any] | None
    error: str | None
    payload: dict[str, Any]
    available_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored checkpoint of a job."""

    key: str
    kind: str
    seq: int
    fence: int
    data: Any


@dataclass(frozen=True, slots=True)
class ReclaimReport:
    """What `reclaim_expired` did: jobs put back in the queue and jobs dead-lettered."""

    requeued: tuple[int, ...] = ()
    dead: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A caller's row write carried by the job's next durable write (same transaction).

    Use one module-level `statement` per kind of row with full parameter dicts: writes sharing a
    statement are sent as one executemany, across every job of a group commit.
    """

    statement: Executable
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Deferred:
    """What a job wrote lazily: step results and row writes that ride its next durable write.

    Nothing in here is visible until that write commits, and it commits only if the lease still
    holds; a crash before it loses exactly the work the next attempt will redo.
    """

    steps: Mapping[str, Any] = field(default_factory=dict)
    writes: Sequence[PendingWrite] = ()

    def __bool__(self) -> bool:
        return bool(self.steps or self.writes)


NOTHING_DEFERRED = Deferred()


def _validate_spec(spec: JobSpec) -> dict[str, Any]:
    if not spec.kind or len(spec.kind) > MAX_KIND_LENGTH:
        raise JobPayloadError(f"job kind must be 1–{MAX_KIND_LENGTH} characters, got {spec.kind!r}")
    if not spec.idempotency_key or len(spec.idempotency_key) > MAX_KEY_LENGTH:
        raise JobPayloadError(
            f"idempotency key must be 1–{MAX_KEY_LENGTH} characters",
            hint="derive it from stable ids, e.g. 'subtask:42:execute'",
        )
    if spec.provider is not None and len(spec.provider) > MAX_PROVIDER_LENGTH:
        raise JobPayloadError(f"provider name is longer than {MAX_PROVIDER_LENGTH} characters")
    if spec.max_attempts < 1:
        raise JobPayloadError("max_attempts must be at least 1")
    if spec.timeout_s < 1:
        raise JobPayloadError("timeout_s must be at least 1 second")
    if not -(2**31) < spec.priority < 2**31:
        raise JobPayloadError("priority must fit in a 32-bit integer")
    try:
        payload = JSONText(json.dumps(spec.payload, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise JobPayloadError(f"job payload is not JSON: {err}") from err
    now = utcnow()
    return {
        "kind": spec.kind,
        "idempotency_key": spec.idempotency_key,
        "payload": payload,
        "priority": spec.priority,
        "provider": spec.provider,
        "task_id": spec.task_id,
        "subtask_id": spec.subtask_id,
        "max_attempts": spec.max_attempts,
        "timeout_s": spec.timeout_s,
        "available_at": spec.available_at or now,
        "status": JOB_QUEUED,
        "attempts": 0,
        "fence": 0,
        "created_at": now,
    }


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@asynccontextmanager
async def _committed(connection: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """Commit when the block ends normally, roll back when it raises (cancellation included)."""
    try:
        yield connection
    except BaseException:
        await connection.rollback()
        raise
    await connection.commit()


def _lease_matches(lease: Lease) -> Any:
    return and_(
        JOBS.c.id == lease.job_id,
        JOBS.c.status == JOB_RUNNING,
        JOBS.c.lease_owner == lease.worker_id,
        JOBS.c.fence == lease.fence,
    )


# The lease named by a statement's parameters is still this worker's (executemany form of `_lease_matches`).
_HELD_BY_PARAMS = and_(
    JOBS.c.id == bindparam("b_id"),
    JOBS.c.status == JOB_RUNNING,
    JOBS.c.lease_owner == bindparam("b_owner"),
    JOBS.c.fence == bindparam("b_fence"),
)
_COMPLETE_MANY = (
    update(JOBS)
    .where(_HELD_BY_PARAMS)
    .values(
        status=JOB_SUCCEEDED,
        result=bindparam("b_result", type_=JOBS.c.result.type),
        error=None,
        lease_expires_at=None,
        deadline_at=None,
        finished_at=bindparam("b_finished", type_=JOBS.c.finished_at.type),
    )
)
# A claim's UPDATE of the rows it selected (statements are built once: building one costs more
# Python than SQLite spends running it).
_CLAIM_VALUES: dict[str, Any] = {
    "status": JOB_RUNNING,
    "lease_owner": bindparam("b_owner"),
    "fence": JOBS.c.fence + 1,
    "attempts": JOBS.c.attempts + 1,
    "started_at": bindparam("b_now", type_=JOBS.c.started_at.type),
    "heartbeat_at": bindparam("b_now", type_=JOBS.c.heartbeat_at.type),
    "lease_expires_at": bindparam("b_expires", type_=JOBS.c.lease_expires_at.type),
    "deadline_at": bindparam("b_deadline", type_=JOBS.c.deadline_at.type),
}
_CLAIM_ROWS = (
    update(JOBS)
    .where(JOBS.c.id.in_(bindparam("b_ids", expanding=True)), JOBS.c.status == JOB_QUEUED)
    .values(**_CLAIM_VALUES)
)
# The same, one row per execution: `execute_dml` runs it straight on the in-loop SQLite writer
# (an expanding IN is rendered anew by SQLAlchemy at every execution, ~0.3 ms at concurrency 1).
_CLAIM_ROW = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("b_id"), JOBS.c.status == JOB_QUEUED)
    .values(**_CLAIM_VALUES)
)


def _fixed(values: Iterable[str]) -> list[Any]:
    """An IN list that is part of a cached statement: one bound value per item (`IN (?, ?)`).

    A plain list becomes an expanding parameter rendered at every execution, which
    `bot.db.direct.fetch` leaves to SQLAlchemy; the claim and the idle probe are built once per
    set of kinds, so their lists are fixed and can be compiled in.
    """
    return [literal(value) for value in values]


_CLAIM_COLUMNS = (
    JOBS.c.id,
    JOBS.c.kind,
    JOBS.c.idempotency_key,
    JOBS.c.payload,
    JOBS.c.priority,
    JOBS.c.provider,
    JOBS.c.task_id,
    JOBS.c.subtask_id,
    JOBS.c.attempts,
    JOBS.c.max_attempts,
    JOBS.c.fence,
    JOBS.c.timeout_s,
)


_TOUCH_MANY = (
    update(JOBS)
    .where(_HELD_BY_PARAMS)
    .values(
        heartbeat_at=bindparam("b_now", type_=JOBS.c.heartbeat_at.type),
        lease_expires_at=bindparam("b_expires", type_=JOBS.c.lease_expires_at.type),
    )
)
# Most steps written in one group commit (bounds one transaction's length).
MAX_STEP_GROUP = 64


@dataclass(slots=True)
class _StepRequest:
    """One job's finished step waiting for a group commit."""

    lease: Lease
    key: str
    payload: Any
    encoded: JSONText  # `payload` as stored (serialised once, when it was checked)
    deferred: Deferred
    outcome: asyncio.Future[Any]
    alone: bool = False

    def settle(self, *, value: Any = None, error: BaseException | None = None) -> None:
        if self.outcome.done():  # the job runner was cancelled meanwhile
            return
        if error is not None:
            self.outcome.set_exception(error)
        else:
            self.outcome.set_result(value)


def _rowcount(result: Any) -> int:
    """Rows matched by an UPDATE/INSERT (the fencing check reads it)."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _no_boundary(_name: str, _job_id: int) -> None:
    return None


class JobQueue:
    """The durable queue over one database; safe to share between tasks and between daemons."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        retry_base_s: float = 2.0,
        retry_max_s: float = 600.0,
        boundary_hook: BoundaryHook | None = None,
        busy_wait_s: float = 30.0,
    ) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.engine = engine
        self.lease = timedelta(seconds=lease_s)
        self.lease_s = lease_s
        # A job may overrun its timeout by this much before another daemon takes it back.
        self._deadline_grace = min(self.lease, timedelta(seconds=5))
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.sqlite = is_sqlite(engine)
        # SQLite: every write of this process goes through one in-loop connection under one lock.
        self._writer = sqlite_writer(engine)
        self._write_lock = self._writer.lock if self._writer else (asyncio.Lock() if self.sqlite else None)
        self._busy_wait_s = busy_wait_s
        self._step_requests: list[_StepRequest] = []
        self._step_writer: asyncio.Task[None] | None = None
        self._insert_step: Any = (
            sqlite_insert(CHECKPOINTS).on_conflict_do_nothing(index_elements=["job_id", "key"])
            if self.sqlite
            else mysql_insert(CHECKPOINTS).on_duplicate_key_update(seq=CHECKPOINTS.c.seq)
        )
        self._insert_jobs: Any = self._insert_ignoring_duplicates()
        self._checkpoint_upsert: Any = self._upsert_checkpoint()
        self._claim_queries: dict[tuple[Any, ...], Any] = {}
        self._probe_queries: dict[tuple[str, ...] | None, tuple[Any, Any]] = {}
        # SQLite file: the probe's own read-only connection, and per set of kinds what its last
        # probe that found nothing due saw — (data_version, earliest queued available_at or None).
        self._watch: sqlite3.Connection | None = None
        self._probe_known: dict[tuple[str, ...] | None, tuple[int, datetime | None]] = {}
        # A seam for crash tests and tracing: called at named commit boundaries.
        self._boundary = boundary_hook or _no_boundary

    # -- transactions ------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self, *, immediate: bool = False) -> AsyncIterator[AsyncConnection]:
        """A short write transaction; on SQLite it holds the write lock from its first statement."""
        if self._write_lock is None:
            async with self.engine.connect() as connection, _committed(connection):
                yield connection
            return
        # SQLite has one writer at a time. Queueing our own writers on an asyncio lock is far
        # cheaper than letting them collide in SQLite's busy handler (which sleeps in steps of
        # up to 100 ms); other processes and other connections of this one are waited for below.
        if self._writer is None:  # in-memory database: the engine's own connections
            async with self._write_lock, self.engine.connect() as connection:
                if immediate:
                    await connection.exec_driver_sql("BEGIN IMMEDIATE")
                async with _committed(connection):
                    yield connection
            return
        async with self._write_lock:
            # Begun and ended on sqlite3 itself, on a connection kept checked out (see
            # `SqliteWriter`). Nothing here leaves the loop turn: the in-loop connection never waits.
            connection = await self._begin_immediate()
            try:
                yield connection
            except BaseException:
                self._writer.end(connection, commit=False)
                raise
            self._writer.end(connection, commit=True)
            self._writer.committed()

    async def _begin_immediate(self) -> AsyncConnection:
        """The writer's connection inside a transaction holding SQLite's write lock."""
        writer = self._writer
        assert writer is not None
        connection = await writer.connection()

        async def attempt() -> AsyncConnection:
            writer.begin_immediate(connection)
            return connection

        return await self._waiting_for_the_lock(attempt)

    async def _relock(self, connection: AsyncConnection) -> None:
        """Begin again on the writer's connection after a rollback (see `_begin_immediate`)."""

        async def attempt() -> None:
            await connection.begin()
            try:
                await execute_sql(connection, "BEGIN IMMEDIATE")
            except OperationalError:
                await connection.rollback()
                raise

        await self._waiting_for_the_lock(attempt)

    async def _waiting_for_the_lock(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """`attempt` to take SQLite's write lock, again and again while another connection holds it.

        The writer's connection runs on the event loop without a busy handler, so a held lock
        fails at once; waiting here instead lets the holder (another process, or an aiosqlite
        connection of this one whose commit needs the loop) finish.
        """
        deadline = time.monotonic() + self._busy_wait_s
        delay = 0.001
        while True:
            try:
                return await attempt()
            except OperationalError as err:
                if ("locked" not in str(err) and "busy" not in str(err)) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """`session` without the ORM: Core statements in one short write transaction.

        For hot writes of plain rows (a submit): an ORM session's setup and flush cost more than
        the inserts, and on SQLite all of it ran while holding the database's one write lock.
        """
        async with self._write() as connection:
            yield connection

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An ORM session in one short write transaction that commits on exit.

        On SQLite it queues on the same lock as the queue's own writes, so the engine's writes never
        collide in SQLite's busy handler (which sleeps up to 100 ms per retry).
        """
        async with self._write() as connection:
            if not connection.in_transaction():
                await connection.begin()
            session = AsyncSession(bind=connection, expire_on_commit=False)
            try:
                yield session
                await session.flush()
            finally:
                await session.close()

    # -- enqueue -----------------------------------------------------------------------------

    async def enqueue(self, spec: JobSpec) -> tuple[int, bool]:
        """Add a job unless its idempotency key exists; returns (job id, whether it was new)."""
        row = _validate_spec(spec)
        async with self._write() as connection:
            result = await execute_dml(connection, self._insert_jobs, row)
            query = select(JOBS.c.id).where(JOBS.c.idempotency_key == spec.idempotency_key)
            job_id = int((await connection.execute(query)).scalar_one())
            # MariaDB counts a no-op ON DUPLICATE KEY UPDATE as a matched row; the insert id
            # tells the truth on both backends (stale or 0 when nothing was inserted).
            inserted_id = cast(CursorResult[Any], result).lastrowid
            created = _rowcount(result) == 1 and inserted_id == job_id
        return job_id, created

    async def enqueue_many(self, specs: Sequence[JobSpec]) -> dict[str, int]:
        """Add many jobs in one transaction; returns idempotency key → job id (new or existing)."""
        rows = [_validate_spec(spec) for spec in specs]
        ids: dict[str, int] = {}
        async with self._write() as connection:
            for chunk in _chunks(rows):
                await execute_dml(connection, self._insert_jobs, list(chunk))
            keys = [row["idempotency_key"] for row in rows]
            for key_chunk in _chunks(keys):
                found = await connection.execute(
                    select(JOBS.c.idempotency_key, JOBS.c.id).where(JOBS.c.idempotency_key.in_(key_chunk))
                )
                ids.update({str(key): int(job_id) for key, job_id in found})
        return ids

    async def enqueue_in(self, connection: AsyncConnection | AsyncSession, specs: Sequence[JobSpec]) -> None:
        """Add jobs inside the caller's transaction (e.g. a commit hook), ignoring known keys.

        This is how a finished job creates the jobs that follow it atomically with its own
        success: both are written, or neither.
        """
        rows = [_validate_spec(spec) for spec in specs]
        for chunk in _chunks(rows):
            await execute_dml(connection, self._insert_jobs, list(chunk))

    def _insert_ignoring_duplicates(self) -> Any:
        if self.sqlite:
            return sqlite_insert(JOBS).on_conflict_do_nothing(index_elements=["idempotency_key"])
        statement = mysql_insert(JOBS)
        # A no-op update instead of INSERT IGNORE, which would also swallow foreign-key errors.
        return statement.on_duplicate_key_update(idempotency_key=statement.inserted.idempotency_key)

    # -- claim -------------------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        kinds: Iterable[str] | None = None,
        provider_slots: Mapping[str, int] | None = None,
    ) -> list[ClaimedJob]:
        """Lease up to `limit` runnable jobs, most urgent first, within per-provider free slots.

        `provider_slots` maps a provider to how many more of its jobs this worker may start;
        providers not named are unlimited.
        """
        request = ClaimRequest(worker_id=worker_id, limit=limit, kinds=None if kinds is None else tuple(kinds),
                               provider_slots=dict(provider_slots or {}))
        if request.empty:
            return []
        async with self._write(immediate=True) as connection:
            claimed = await self._claim_in(connection, request, utcnow())
        if claimed:
            self._boundary("claim.after_commit", claimed[0].id)
        return claimed

    async def _claim_in(self, connection: AsyncConnection, request: ClaimRequest, now: datetime) -> list[ClaimedJob]:
        """The claim's reads and writes inside the caller's write transaction (see `claim`)."""
        slots = dict(request.provider_slots)
        kind_list = None if request.kinds is None else tuple(sorted(set(request.kinds)))
        full = tuple(sorted(provider for provider, free in slots.items() if free <= 0))
        limited = any(free > 0 for free in slots.values())
        params = {"b_now": now, "b_fetch": request.limit * _OVERFETCH if limited else request.limit}
        query = self._claim_query(kind_list, full)
        raw = inline_sqlite_connection(connection)  # the in-loop writer: no greenlet for the read
        result = fetch(raw, connection.dialect, query, params) if raw is not None else None
        rows = (result if result is not None else await connection.execute(query, params)).all()
        claimed: list[ClaimedJob] = []
        for row in rows:
            if len(claimed) == request.limit:
                break
            if row.provider is not None and row.provider in slots:
                if slots[row.provider] <= 0:
                    continue
                slots[row.provider] -= 1
            claimed.append(
                ClaimedJob(
                    id=int(row.id),
                    kind=row.kind,
                    idempotency_key=row.idempotency_key,
                    payload=row.payload or {},
                    priority=int(row.priority),
                    provider=row.provider,
                    task_id=row.task_id,
                    subtask_id=row.subtask_id,
                    attempts=int(row.attempts) + 1,
                    max_attempts=int(row.max_attempts),
                    fence=int(row.fence) + 1,
                    timeout_s=int(row.timeout_s),
                    worker_id=request.worker_id,
                )
            )
        if not claimed:
            return []
        by_timeout: dict[int, list[int]] = defaultdict(list)
        for job in claimed:
            by_timeout[job.timeout_s].append(job.id)
        for timeout_s, job_ids in by_timeout.items():
            values = {"b_owner": request.worker_id, "b_now": now, "b_expires": now + self.lease,
                      "b_deadline": now + timedelta(seconds=timeout_s) + self._deadline_grace}
            if len(job_ids) == 1:
                await execute_dml(connection, _CLAIM_ROW, {**values, "b_id": job_ids[0]})
            elif raw is not None:  # sqlite3's executemany of one prepared statement
                await execute_dml(connection, _CLAIM_ROW, [{**values, "b_id": job_id} for job_id in job_ids])
            else:  # one statement for all: one round trip to a database server
                await connection.execute(_CLAIM_ROWS, {**values, "b_ids": job_ids})
        self._boundary("claim.before_commit", claimed[0].id)
        return claimed

    async def has_claimable(self, kinds: Iterable[str] | None = None) -> bool:
        """Whether some job is queued and due: a read, without the write lock a claim takes.

        Other processes' new jobs wake nobody here; a worker with free slots asks this often and
        claims only when it says yes (bot/engine/queue/worker.py). On a SQLite file an idle probe
        usually runs no query: SQLite's `data_version` tells whether any other connection has
        committed since the last probe found nothing due, and that probe noted when the earliest
        queued job falls due — with neither, the answer cannot have changed.
        """
        kind_list = None if kinds is None else tuple(sorted(set(kinds)))
        queries = self._probe_queries.get(kind_list)
        if queries is None:
            queued = [JOBS.c.status == JOB_QUEUED]
            if kind_list is not None:
                queued.append(JOBS.c.kind.in_(_fixed(kind_list)))
            due_query = select(JOBS.c.id).where(
                *queued, JOBS.c.available_at <= bindparam("b_now", type_=JOBS.c.available_at.type)).limit(1)
            queries = (due_query, select(func.min(JOBS.c.available_at)).where(*queued))
            if len(self._probe_queries) < 16:
                self._probe_queries[kind_list] = queries
        now = utcnow()
        watch = self._watch_connection()
        if watch is None:
            async with lazy_reads(self.engine) as reads:
                return (await reads.execute(queries[0], {"b_now": now})).first() is not None
        version = data_version(watch)  # read first: a commit after it shows at the next probe
        known = self._probe_known.get(kind_list)
        if known is not None and known[0] == version and (known[1] is None or now < known[1]):
            return False
        due = fetch(watch, self.engine.dialect, queries[0], {"b_now": now})
        earliest = fetch(watch, self.engine.dialect, queries[1])
        if due is None or earliest is None:  # the statements' first use (see `fetch`)
            async with lazy_reads(self.engine) as reads:
                due = await reads.execute(queries[0], {"b_now": now})
                earliest = await reads.execute(queries[1])
        if due.first() is not None:
            self._probe_known.pop(kind_list, None)
            return True
        self._probe_known[kind_list] = (version, earliest.scalar())
        return False

    def _watch_connection(self) -> sqlite3.Connection | None:
        """The probe's read-only connection on a SQLite file (None elsewhere); kept, never shared:
        `data_version` compares commits seen by one connection."""
        if self._watch is None and self.sqlite:
            readers = raw_readers(self.engine)
            if readers is not None:
                self._watch = readers.take()
        return self._watch

    def _claim_query(self, kinds: tuple[str, ...] | None, full: tuple[str, ...]) -> Any:
        """The claim's SELECT for these kinds and full providers, built once per combination."""
        key = (kinds, full)
        query = self._claim_queries.get(key)
        if query is not None:
            return query
        query = select(*_CLAIM_COLUMNS).where(
            JOBS.c.status == JOB_QUEUED, JOBS.c.available_at <= bindparam("b_now", type_=JOBS.c.available_at.type)
        )
        if kinds is not None:
            query = query.where(JOBS.c.kind.in_(_fixed(kinds)))
        if full:
            query = query.where(or_(JOBS.c.provider.is_(None), JOBS.c.provider.not_in(_fixed(full))))
        query = query.order_by(JOBS.c.priority.desc(), JOBS.c.id).limit(bindparam("b_fetch"))
        if not self.sqlite:
            query = query.with_for_update(skip_locked=True)
        if len(self._claim_queries) < 64:  # the combinations a worker uses are few
            self._claim_queries[key] = query
        return query

    # -- lease holder's writes ---------------------------------------------------------------

    async def heartbeat(self, worker_id: str, leases: Iterable[Lease]) -> set[int]:
        """Extend this worker's leases; returns the ids of jobs it no longer holds."""
        held_wanted = {lease.job_id: lease.fence for lease in leases}
        now = utcnow()
        async with self._write() as connection:
            await connection.execute(update(WORKERS).where(WORKERS.c.id == worker_id).values(heartbeat_at=now))
            if not held_wanted:
                return set()
            # Only the leases the worker says it runs: a job leased to it that it never started
            # (a claim whose commit it could not confirm) must expire and be taken back.
            for ids in _chunks(sorted(held_wanted)):
                await connection.execute(
                    update(JOBS)
                    .where(JOBS.c.id.in_(ids), JOBS.c.lease_owner == worker_id, JOBS.c.status == JOB_RUNNING)
                    .values(heartbeat_at=now, lease_expires_at=now + self.lease)
                )
            rows = await connection.execute(
                select(JOBS.c.id, JOBS.c.fence).where(JOBS.c.lease_owner == worker_id, JOBS.c.status == JOB_RUNNING)
            )
            held = {int(job_id): int(fence) for job_id, fence in rows}
        return {job_id for job_id, fence in held_wanted.items() if held.get(job_id) != fence}

    async def complete(
        self,
        lease: Lease,
        result: dict[str, Any] | None,
        *,
        hooks: Sequence[CommitHook] = (),
    ) -> bool:
        """Record success, and run `hooks` in the same transaction, only if the lease still holds.

        Returns False (writing nothing) when another attempt owns the job now: the hooks are where
        callers write their own result rows, so those too are written exactly once.
        """
        return lease.job_id in await self.complete_batch([(lease, result, tuple(hooks))])

    async def complete_many(self, outcomes: Sequence[tuple[Lease, dict[str, Any] | None]]) -> set[int]:
        """Record many successes without hooks in one transaction; returns the ids recorded."""
        return await self.complete_batch([(lease, result, ()) for lease, result in outcomes])

    async def complete_batch(
        self,
        items: Sequence[tuple[Lease, dict[str, Any] | None, Sequence[CommitHook]]],
        *,
        deferred: Mapping[int, Deferred] | None = None,
        batched: Mapping[int, Sequence[tuple[BatchHook, Any]]] | None = None,
    ) -> set[int]:
        """Group commit: record many successes (each fenced on its own) in one transaction.

        Returns the ids recorded; a stale lease among them is skipped, not fatal. If a hook raises,
        nothing of the batch is written and the error propagates (callers retry items singly).
        `deferred` (job id → its lazy writes) is written for the recorded jobs, before the hooks.
        `batched` (job id → (batch hook, item) pairs): after the per-job hooks, each batch hook runs
        once with the items of the recorded jobs, in job-id order.
        """
        done, _claimed = await self.complete_and_claim(items, deferred=deferred, batched=batched)
        return done

    async def complete_and_claim(
        self,
        items: Sequence[tuple[Lease, dict[str, Any] | None, Sequence[CommitHook]]],
        *,
        deferred: Mapping[int, Deferred] | None = None,
        batched: Mapping[int, Sequence[tuple[BatchHook, Any]]] | None = None,
        claim: ClaimRequest | None = None,
    ) -> tuple[set[int], list[ClaimedJob]]:
        """`complete_batch`, and in the same transaction the claim of the slots it frees.

        A worker whose jobs finish wants their successors at once: claiming them in the commit that
        records the results saves a transaction per job when jobs run one after another. The claim
        comes after the hooks, so jobs they enqueue (a subtask's dependants) can be claimed in the
        same commit; a crash before the commit loses both, after it leaves the claimed jobs leased
        to a dead worker, which the next start takes back (the same states as two transactions).
        """
        checked = sorted(
            ((lease, self._encoded_json(result), tuple(hooks)) for lease, result, hooks in items),
            key=lambda item: item[0].job_id,  # the same lock order as step groups and claims
        )
        done: set[int] = set()
        claimed: list[ClaimedJob] = []
        if not checked:
            return done, claimed
        now = utcnow()
        async with self._write() as connection:
            fast = False
            if len(checked) > 1:
                # One round trip for the whole group; only if some lease was lost do we redo it row
                # by row to learn which (the all-or-nothing check keeps this exact).
                rows = [
                    {"b_id": lease.job_id, "b_owner": lease.worker_id, "b_fence": lease.fence, "b_result": result,
                     "b_finished": now}
                    for lease, result, _hooks in checked
                ]
                outcome = await execute_dml(connection, _COMPLETE_MANY, rows)
                if _rowcount(outcome) == len(rows):
                    fast = True
                    done.update(lease.job_id for lease, _result, _hooks in checked)
                else:
                    await connection.rollback()
                    if self._writer is not None:
                        await self._relock(connection)
            if not fast:
                for lease, result, _hooks in checked:
                    if await self._complete_one(connection, lease, result, now):
                        done.add(lease.job_id)
            hooked_done = [hooks for lease, _result, hooks in checked if hooks and lease.job_id in done]
            if deferred:
                await self._apply_deferred(
                    connection,
                    [(lease, deferred[lease.job_id]) for lease, _r, _h in checked
                     if lease.job_id in done and lease.job_id in deferred],
                    now,
                )
            groups: dict[BatchHook, list[Any]] = {}
            for lease, _result, _hooks in checked:
                if lease.job_id in done:
                    for batch_hook, item in (batched or {}).get(lease.job_id, ()):
                        groups.setdefault(batch_hook, []).append(item)
            if hooked_done or groups:
                # Hooks get an ORM session joined to this transaction: their rows commit with the
                # result or not at all.
                hook_session = AsyncSession(bind=connection, expire_on_commit=False)
                for hooks in hooked_done:
                    for hook in hooks:
                        await hook(hook_session)
                for batch_hook, batch_items in groups.items():
                    await batch_hook(hook_session, batch_items)
                await flush_pending(hook_session)
            if claim is not None and not claim.empty:
                claimed = await self._claim_in(connection, claim, now)
            self._boundary("complete.before_commit", checked[0][0].job_id)
        self._boundary("complete.after_commit", checked[0][0].job_id)
        if claimed:
            self._boundary("claim.after_commit", claimed[0].id)
        return done, claimed

    async def _complete_one(
        self, connection: AsyncConnection, lease: Lease, result: JSONText, now: datetime
    ) -> bool:
        outcome = await execute_dml(
            connection,
            _COMPLETE_MANY,
            {"b_id": lease.job_id, "b_owner": lease.worker_id, "b_fence": lease.fence, "b_result": result,
             "b_finished": now},
        )
        return _rowcount(outcome) == 1

    async def fail(
        self,
        job: ClaimedJob,
        error: str,
        *,
        retry: bool = True,
        deferred: Deferred = NOTHING_DEFERRED,
    ) -> str | None:
        """Record a failed attempt: back to the queue after a backoff, or dead when out of attempts.

        Returns the new status, or None when the lease was already lost (nothing written). The
        attempt's `deferred` writes (e.g. the log rows of its failed calls) commit with it.
        """
        now = utcnow()
        dead = not retry or job.attempts >= job.max_attempts
        values: dict[str, Any] = {"error": error[:65_000], "lease_expires_at": None}
        if dead:
            values.update(status=JOB_DEAD, finished_at=now, deadline_at=None)
        else:
            values.update(
                status=JOB_QUEUED,
                lease_owner=None,
                deadline_at=None,
                available_at=now + timedelta(seconds=self.backoff_s(job.attempts)),
            )
        async with self._write() as connection:
            outcome = await connection.execute(update(JOBS).where(_lease_matches(job.lease)).values(**values))
            if _rowcount(outcome) != 1:
                return None
            await self._apply_deferred(connection, [(job.lease, deferred)], now)
        return JOB_DEAD if dead else JOB_QUEUED

    def backoff_s(self, attempts: int) -> float:
        """Exponential backoff before the next attempt, capped."""
        exponent = min(max(attempts - 1, 0), 30)
        return float(min(self.retry_base_s * math.pow(2, exponent), self.retry_max_s))

    async def release(self, lease: Lease, *, deferred: Deferred = NOTHING_DEFERRED) -> bool:
        """Hand a job back without charging an attempt (graceful shutdown); its checkpoints stay."""
        async with self._write() as connection:
            outcome = await connection.execute(
                update(JOBS)
                .where(_lease_matches(lease))
                .values(
                    status=JOB_QUEUED,
                    attempts=JOBS.c.attempts - 1,
                    lease_owner=None,
                    lease_expires_at=None,
                    deadline_at=None,
                    available_at=utcnow(),
                )
            )
            if _rowcount(outcome) != 1:
                return False
            await self._apply_deferred(connection, [(lease, deferred)], utcnow())
            return True

    async def checkpoint(
        self,
        lease: Lease,
        key: str,
        data: Any,
        *,
        kind: str = CHECKPOINT_PARTIAL,
        deferred: Deferred = NOTHING_DEFERRED,
    ) -> int:
        """Store (or overwrite) a checkpoint while holding the lease; returns its write count.

        Raises LeaseLostError when the lease is gone, so a stale attempt stops writing.
        `deferred` commits in the same transaction.
        """
        self._check_key(key)
        payload = self._encoded_json(data)
        now = utcnow()
        async with self._write() as connection:
            await self._touch_lease(connection, lease, now)
            await execute_dml(
                connection,
                self._checkpoint_upsert,
                {
                    "job_id": lease.job_id,
                    "key": key,
                    "kind": kind,
                    "seq": 1,
                    "fence": lease.fence,
                    "data": payload,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            await self._apply_deferred(connection, [(lease, deferred)], now)
            self._boundary("checkpoint.before_commit", lease.job_id)
            seq = (
                await connection.execute(
                    select(CHECKPOINTS.c.seq).where(CHECKPOINTS.c.job_id == lease.job_id, CHECKPOINTS.c.key == key)
                )
            ).scalar_one()
        self._boundary("checkpoint.after_commit", lease.job_id)
        return int(seq)

    async def record_step(self, lease: Lease, key: str, data: Any, *, deferred: Deferred = NOTHING_DEFERRED) -> Any:
        """Store a finished step's result once; returns the stored value (first write wins).

        `deferred` (the job's lazy steps and row writes) commits in the same transaction. Steps of
        concurrent jobs are group-committed: whoever finds no group in flight starts one, and
        every step waiting at that moment is written in one transaction (each fenced on its own
        lease); nobody returns before its own step is committed, so durability is unchanged.
        Raises LeaseLostError when this attempt no longer holds the job.
        """
        self._check_key(key)
        encoded = self._encoded_json(data)
        request = _StepRequest(lease, key, data, encoded, deferred, asyncio.get_running_loop().create_future())
        self._step_requests.append(request)
        if self._step_writer is None or self._step_writer.done():
            self._step_writer = asyncio.create_task(self._write_step_groups(), name="queue-step-commits")
        return await request.outcome

    async def _write_step_groups(self) -> None:
        """Commit waiting steps in groups until none wait (a short-lived task, not a daemon)."""
        while self._step_requests:
            size = 1 if self._step_requests[0].alone else MAX_STEP_GROUP
            group = self._step_requests[:size]
            del self._step_requests[:size]
            try:
                stored = await self._record_step_group_retrying(group)
            except asyncio.CancelledError:
                # The loop is shutting down: nobody may wait forever for a step that was not written.
                for request in [*group, *self._step_requests]:
                    request.outcome.cancel()
                self._step_requests.clear()
                raise
            except LeaseLostError as err:
                if len(group) == 1:
                    group[0].settle(error=err)
                    continue
                # Some lease in the group is gone: write them one by one so only that one fails.
                self._step_requests[:0] = [_StepRequest(r.lease, r.key, r.payload, r.encoded, r.deferred,
                                                        r.outcome, alone=True) for r in group]
                continue
            except Exception as err:  # handed to each waiting job runner, which records its failure
                for request in group:
                    request.settle(error=err)
                continue
            for request in group:
                request.settle(value=stored[request.lease.job_id, request.key])

    async def _record_step_group_retrying(self, group: list[_StepRequest]) -> dict[tuple[int, str], Any]:
        """A deadlock or a busy database must not cost finished steps: retry the group a few times.

        InnoDB may pick the group as a deadlock victim (it rolls the whole transaction back); the
        writes are fenced and first-write-wins, so a retry after an unseen commit changes nothing.
        """
        for attempt in range(4):
            try:
                return await self._record_step_group(group)
            except DBAPIError as err:
                log.warning("queue.step_commit_retry", error=str(err.orig), attempt=attempt + 1)
                await asyncio.sleep(0.01 * 2**attempt)
        return await self._record_step_group(group)

    async def _record_step_group(self, group: list[_StepRequest]) -> dict[tuple[int, str], Any]:
        now = utcnow()
        group = sorted(group, key=lambda request: request.lease.job_id)  # one lock order everywhere
        async with self._write() as connection:
            touched = await execute_dml(
                connection,
                _TOUCH_MANY,
                [
                    {"b_id": r.lease.job_id, "b_owner": r.lease.worker_id, "b_fence": r.lease.fence,
                     "b_now": now, "b_expires": now + self.lease}
                    for r in group
                ],
            )
            if _rowcount(touched) != len(group):
                if len(group) == 1:
                    raise LeaseLostError(
                        f"job {group[0].lease.job_id}: this worker's lease (fence {group[0].lease.fence}) is gone",
                        hint="another attempt owns the job now; this one must stop",
                    )
                raise LeaseLostError("a lease in the step group is gone")
            inserted = await execute_dml(
                connection,
                self._insert_step, [self._step_row(r.lease, r.key, r.encoded, now) for r in group]
            )
            await self._apply_deferred(connection, [(r.lease, r.deferred) for r in group], now)
            for request in group:
                self._boundary("step.before_commit", request.lease.job_id)
            if self.sqlite and _rowcount(inserted) == len(group):
                stored = {(r.lease.job_id, r.key): r.payload for r in group}  # all new: ours are the stored values
            else:
                stored = {}
                for request in group:
                    stored[request.lease.job_id, request.key] = (
                        await connection.execute(
                            select(CHECKPOINTS.c.data).where(
                                CHECKPOINTS.c.job_id == request.lease.job_id, CHECKPOINTS.c.key == request.key
                            )
                        )
                    ).scalar_one()
        for request in group:
            self._boundary("step.after_commit", request.lease.job_id)
        return stored

    @staticmethod
    def _step_row(lease: Lease, key: str, payload: JSONText, now: datetime) -> dict[str, Any]:
        return {
            "job_id": lease.job_id,
            "key": key,
            "kind": CHECKPOINT_STEP,
            "seq": 1,
            "fence": lease.fence,
            "data": payload,
            "created_at": now,
            "updated_at": now,
        }

    async def _apply_deferred(
        self, connection: AsyncConnection, items: Sequence[tuple[Lease, Deferred]], now: datetime
    ) -> None:
        """Write lazy steps and pending rows of jobs whose fenced write matched, batched per statement."""
        step_rows = [
            # Serialised here, not when the step ran: the stored text is the value as of this write.
            self._step_row(lease, key, self._encoded_json(value), now)
            for lease, deferred in items
            for key, value in deferred.steps.items()
        ]
        if step_rows:
            await execute_dml(connection, self._insert_step, step_rows)
        groups: dict[int, tuple[Executable, list[dict[str, Any]]]] = {}
        for _lease, deferred in items:
            for write in deferred.writes:
                groups.setdefault(id(write.statement), (write.statement, []))[1].append(write.params)
        for statement, params in groups.values():
            await execute_dml(connection, statement, params)

    async def _touch_lease(self, connection: AsyncConnection, lease: Lease, now: datetime) -> None:
        outcome = await execute_dml(
            connection,
            _TOUCH_MANY,
            {"b_id": lease.job_id, "b_owner": lease.worker_id, "b_fence": lease.fence, "b_now": now,
             "b_expires": now + self.lease},
        )
        if _rowcount(outcome) != 1:
            raise LeaseLostError(
                f"job {lease.job_id}: this worker's lease (fence {lease.fence}) is gone",
                hint="another attempt owns the job now; this one must stop",
            )

    def _upsert_checkpoint(self) -> Any:
        """Insert or overwrite one checkpoint (the row comes as the execute's parameters)."""
        if self.sqlite:
            statement = sqlite_insert(CHECKPOINTS)
            return statement.on_conflict_do_update(
                index_elements=["job_id", "key"],
                set_={
                    "data": statement.excluded.data,
                    "kind": statement.excluded.kind,
                    "fence": statement.excluded.fence,
                    "updated_at": statement.excluded.updated_at,
                    "seq": CHECKPOINTS.c.seq + 1,
                },
            )
        insert_statement = mysql_insert(CHECKPOINTS)
        return insert_statement.on_duplicate_key_update(
            data=insert_statement.inserted.data,
            kind=insert_statement.inserted.kind,
            fence=insert_statement.inserted.fence,
            updated_at=insert_statement.inserted.updated_at,
            seq=CHECKPOINTS.c.seq + 1,
        )

    @staticmethod
    def _check_key(key: str) -> None:
        if not key or len(key) > MAX_KEY_LENGTH:
            raise JobPayloadError(f"checkpoint key must be 1–{MAX_KEY_LENGTH} characters")

    @staticmethod
    def _checked_json(value: Any) -> Any:
        JobQueue._encoded_json(value)
        return value

    @staticmethod
    def _encoded_json(value: Any) -> JSONText:
        """`value` as the JSON text its column stores; JobPayloadError when it has none.

        Checking a value is serialising it, so that text is what gets stored (the column type
        does not serialise it again).
        """
        try:
            return JSONText(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise JobPayloadError(f"value is not JSON-serialisable: {err}") from err

    # -- recovery and control ----------------------------------------------------------------

    async def reclaim_expired(self) -> ReclaimReport:
        """Requeue running jobs whose lease expired or that ran past their timeout.

        A timed-out attempt stays charged; an orphaned one is refunded (see `_take_back`).
        Checkpoints are kept, so the next attempt resumes from them.
        """
        now = utcnow()
        query = (
            select(
                JOBS.c.id,
                JOBS.c.fence,
                JOBS.c.attempts,
                JOBS.c.max_attempts,
                JOBS.c.lease_expires_at,
                JOBS.c.deadline_at,
                JOBS.c.lease_owner,
            )
            .where(
                JOBS.c.status == JOB_RUNNING,
                or_(JOBS.c.lease_expires_at < now, JOBS.c.deadline_at < now),
            )
            .order_by(JOBS.c.id)
            .limit(_IN_CHUNK)
        )
        if not self.sqlite:
            query = query.with_for_update(skip_locked=True)
        requeued: list[int] = []
        dead: list[int] = []
        async with self._write(immediate=True) as connection:
            for row in (await connection.execute(query)).all():
                timed_out = row.deadline_at is not None and row.deadline_at < now
                reason = (
                    f"timed out (attempt {row.attempts})"
                    if timed_out
                    else f"lease expired: worker {row.lease_owner} stopped heartbeating"
                )
                is_dead = await self._take_back(connection, row, now, charged=timed_out, reason=reason)
                if is_dead is not None:
                    (dead if is_dead else requeued).append(int(row.id))
        return ReclaimReport(requeued=tuple(requeued), dead=tuple(dead))

    async def _take_back(
        self, connection: AsyncConnection, row: Any, now: datetime, *, charged: bool, reason: str
    ) -> bool | None:
        """Requeue (or dead-letter) one orphaned running job; None if it changed meanwhile.

        A timeout is the job's fault and keeps the attempt charged. An orphan (its worker died or
        stalled) is usually innocent, so its attempt is refunded — a daemon crash must not burn
        the retry budget of every job in flight — unless it has now been claimed
        `ORPHAN_CLAIM_FACTOR` × max_attempts times: then it is treated as the poison that keeps
        killing workers and dead-lettered.
        """
        attempts, max_attempts, fence = int(row.attempts), int(row.max_attempts), int(row.fence)
        is_dead = attempts >= max_attempts if charged else fence >= max_attempts * ORPHAN_CLAIM_FACTOR
        values: dict[str, Any] = {
            "error": reason if not is_dead or charged else f"{reason}; gave up after {fence} orphaned claims",
            "lease_expires_at": None,
            "deadline_at": None,
            "lease_owner": None,
        }
        if not charged and not is_dead:
            values["attempts"] = JOBS.c.attempts - 1
        if is_dead:
            values.update(status=JOB_DEAD, finished_at=now)
        else:
            values.update(status=JOB_QUEUED, available_at=now)
        outcome = await connection.execute(
            update(JOBS)
            .where(JOBS.c.id == row.id, JOBS.c.status == JOB_RUNNING, JOBS.c.fence == fence)
            .values(**values)
        )
        return is_dead if _rowcount(outcome) == 1 else None

    async def reclaim_worker(self, worker_id: str, *, reason: str) -> ReclaimReport:
        """Requeue every job a worker known to be dead holds, without waiting for lease expiry."""
        now = utcnow()
        requeued: list[int] = []
        dead: list[int] = []
        async with self._write(immediate=True) as connection:
            query = select(JOBS.c.id, JOBS.c.fence, JOBS.c.attempts, JOBS.c.max_attempts).where(
                JOBS.c.lease_owner == worker_id, JOBS.c.status == JOB_RUNNING
            )
            if not self.sqlite:
                query = query.with_for_update(skip_locked=True)
            for row in (await connection.execute(query)).all():
                is_dead = await self._take_back(connection, row, now, charged=False, reason=reason)
                if is_dead is not None:
                    (dead if is_dead else requeued).append(int(row.id))
            await connection.execute(
                update(WORKERS).where(WORKERS.c.id == worker_id, WORKERS.c.stopped_at.is_(None)).values(stopped_at=now)
            )
        return ReclaimReport(requeued=tuple(requeued), dead=tuple(dead))

    async def live_workers_on(self, hostname: str) -> list[tuple[str, int]]:
        """(worker id, pid) of workers on `hostname` not marked stopped."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(WORKERS.c.id, WORKERS.c.pid).where(
                    WORKERS.c.hostname == hostname[:255], WORKERS.c.stopped_at.is_(None)
                )
            )
            return [(str(worker_id), int(pid)) for worker_id, pid in rows]

    async def cancel(self, job_id: int, *, reason: str = "cancelled") -> bool:
        """Stop a queued or running job for good; a running holder loses its lease."""
        async with self._write() as connection:
            outcome = await connection.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.status.in_((JOB_QUEUED, JOB_RUNNING)))
                .values(
                    status=JOB_CANCELLED,
                    error=reason,
                    lease_owner=None,
                    lease_expires_at=None,
                    deadline_at=None,
                    finished_at=utcnow(),
                )
            )
            return _rowcount(outcome) == 1

    async def cancel_task(self, task_id: int, *, reason: str = "task cancelled") -> int:
        """Cancel every unfinished job of a task; returns how many were cancelled."""
        async with self._write() as connection:
            outcome = await connection.execute(
                update(JOBS)
                .where(JOBS.c.task_id == task_id, JOBS.c.status.in_((JOB_QUEUED, JOB_RUNNING)))
                .values(
                    status=JOB_CANCELLED,
                    error=reason,
                    lease_owner=None,
                    lease_expires_at=None,
                    deadline_at=None,
                    finished_at=utcnow(),
                )
            )
            return _rowcount(outcome)

    async def retry_dead(self, job_id: int) -> bool:
        """Give a dead-lettered job a fresh set of attempts (an operator's decision)."""
        async with self._write() as connection:
            outcome = await connection.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.status == JOB_DEAD)
                .values(status=JOB_QUEUED, attempts=0, available_at=utcnow(), finished_at=None)
            )
            return _rowcount(outcome) == 1

    # -- workers -----------------------------------------------------------------------------

    async def register_worker(self, worker_id: str, *, hostname: str, pid: int, concurrency: int) -> None:
        """Record a worker so operators can see which daemon holds which leases."""
        now = utcnow()
        async with self._write() as connection:
            await connection.execute(delete(WORKERS).where(WORKERS.c.id == worker_id))
            await connection.execute(
                WORKERS.insert().values(
                    id=worker_id,
                    hostname=hostname[:255],
                    pid=pid,
                    concurrency=concurrency,
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    async def worker_stopped(self, worker_id: str) -> None:
        """Mark a worker as cleanly stopped."""
        async with self._write() as connection:
            await connection.execute(update(WORKERS).where(WORKERS.c.id == worker_id).values(stopped_at=utcnow()))

    # -- reads -------------------------------------------------------------------------------

    async def get(self, job_id: int) -> JobView:
        """A snapshot of one job."""
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(JOBS).where(JOBS.c.id == job_id))).first()
        if row is None:
            raise UnknownJobError(f"no job with id {job_id}")
        return JobView(
            id=int(row.id),
            kind=row.kind,
            idempotency_key=row.idempotency_key,
            status=row.status,
            priority=int(row.priority),
            provider=row.provider,
            task_id=row.task_id,
            subtask_id=row.subtask_id,
            attempts=int(row.attempts),
            max_attempts=int(row.max_attempts),
            fence=int(row.fence),
            lease_owner=row.lease_owner,
            result=row.result,
            error=row.error,
            payload=row.payload or {},
            available_at=row.available_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

    async def checkpoints(self, job_id: int) -> dict[str, Checkpoint]:
        """Every checkpoint of a job, by key."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(
                    CHECKPOINTS.c.key, CHECKPOINTS.c.kind, CHECKPOINTS.c.seq, CHECKPOINTS.c.fence, CHECKPOINTS.c.data
                ).where(CHECKPOINTS.c.job_id == job_id)
            )
            return {
                row.key: Checkpoint(key=row.key, kind=row.kind, seq=int(row.seq), fence=int(row.fence), data=row.data)
                for row in rows
            }

    async def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(JOBS.c.status, func.count()).group_by(JOBS.c.status))
            return {str(status): int(count) for status, count in rows}

    async def running_by_provider(self) -> dict[str | None, int]:
        """Running jobs per provider across every daemon (for status pages)."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(JOBS.c.provider, func.count()).where(JOBS.c.status == JOB_RUNNING).group_by(JOBS.c.provider)
            )
            return {provider: int(count) for provider, count in rows}
