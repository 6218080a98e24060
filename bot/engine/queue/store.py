"""JobQueue: every state change of a durable job, each one short transaction.

Claiming differs per backend because SQLite ignores `FOR UPDATE`: on MariaDB a claimer selects
candidates with `FOR UPDATE SKIP LOCKED` (concurrent claimers skip each other's rows instead of
waiting), on SQLite the claim transaction starts with `BEGIN IMMEDIATE`, which takes the single
write lock before reading, so two claimers can never read the same queued rows. Every write that a
lease holder makes (complete, fail, release, checkpoint) is an UPDATE fenced on
(id, status = running, lease_owner, fence): once a lease is reclaimed the stale holder's statement
matches nothing, so a result is never written twice. On SQLite those fenced UPDATEs come first in
their transaction, so the write lock is taken before anything is read.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from bot.db.base import utcnow
from bot.db.engine import is_sqlite
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

JOBS = cast(Table, Job.__table__)
CHECKPOINTS = cast(Table, JobCheckpoint.__table__)
WORKERS = cast(Table, QueueWorker.__table__)

MAX_KEY_LENGTH = 255
MAX_KIND_LENGTH = 64
MAX_PROVIDER_LENGTH = 64
# Candidates fetched per requested job when provider limits may filter some out.
_OVERFETCH = 4
# SQLite allows 32766 bound parameters; keep IN lists well below, and MariaDB packets small.
_IN_CHUNK = 500
# An orphaned job (its worker died) is dead-lettered after this many × max_attempts claims.
ORPHAN_CLAIM_FACTOR = 3

CommitHook = Callable[[AsyncSession], Awaitable[None]]
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
        json.dumps(spec.payload, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise JobPayloadError(f"job payload is not JSON: {err}") from err
    now = utcnow()
    return {
        "kind": spec.kind,
        "idempotency_key": spec.idempotency_key,
        "payload": spec.payload,
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


def _lease_matches(lease: Lease) -> Any:
    return and_(
        JOBS.c.id == lease.job_id,
        JOBS.c.status == JOB_RUNNING,
        JOBS.c.lease_owner == lease.worker_id,
        JOBS.c.fence == lease.fence,
    )


_COMPLETE_MANY = (
    update(JOBS)
    .where(
        JOBS.c.id == bindparam("b_id"),
        JOBS.c.status == JOB_RUNNING,
        JOBS.c.lease_owner == bindparam("b_owner"),
        JOBS.c.fence == bindparam("b_fence"),
    )
    .values(
        status=JOB_SUCCEEDED,
        result=bindparam("b_result", type_=JOBS.c.result.type),
        error=None,
        lease_expires_at=None,
        deadline_at=None,
    )
)


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
        lease_s: float = 30.0,
        retry_base_s: float = 2.0,
        retry_max_s: float = 600.0,
        boundary_hook: BoundaryHook | None = None,
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
        self._write_lock = asyncio.Lock() if self.sqlite else None
        # A seam for crash tests and tracing: called at named commit boundaries.
        self._boundary = boundary_hook or _no_boundary

    # -- transactions ------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self, *, immediate: bool = False) -> AsyncIterator[AsyncConnection]:
        """A short write transaction; on SQLite it holds the write lock from its first statement."""
        if self._write_lock is None:
            async with self.engine.connect() as connection:
                try:
                    yield connection
                except BaseException:
                    await connection.rollback()
                    raise
                await connection.commit()
            return
        # SQLite has one writer at a time. Queueing our own writers on an asyncio lock is far
        # cheaper than letting them collide in SQLite's busy handler (which sleeps in steps of
        # up to 100 ms); other processes still wait through the busy timeout.
        async with self._write_lock, self.engine.connect() as connection:
            # Transactions that read before they write take the write lock up front, so no other
            # process can claim the rows they read; the rest start with a write, which takes it.
            if immediate:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                await connection.rollback()
                raise
            await connection.commit()

    # -- enqueue -----------------------------------------------------------------------------

    async def enqueue(self, spec: JobSpec) -> tuple[int, bool]:
        """Add a job unless its idempotency key exists; returns (job id, whether it was new)."""
        row = _validate_spec(spec)
        async with self._write() as connection:
            result = await connection.execute(self._insert_ignoring_duplicates(), row)
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
                await connection.execute(self._insert_ignoring_duplicates(), list(chunk))
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
            await connection.execute(self._insert_ignoring_duplicates(), list(chunk))

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
        if limit <= 0:
            return []
        slots = dict(provider_slots or {})
        now = utcnow()
        query = select(
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
        ).where(JOBS.c.status == JOB_QUEUED, JOBS.c.available_at <= now)
        kind_list = None if kinds is None else sorted(set(kinds))
        if kind_list is not None:
            if not kind_list:
                return []
            query = query.where(JOBS.c.kind.in_(kind_list))
        full = sorted(provider for provider, free in slots.items() if free <= 0)
        if full:
            query = query.where(or_(JOBS.c.provider.is_(None), JOBS.c.provider.not_in(full)))
        limited = any(free > 0 for free in slots.values())
        fetch = limit * _OVERFETCH if limited else limit
        query = query.order_by(JOBS.c.priority.desc(), JOBS.c.id).limit(fetch)
        if not self.sqlite:
            query = query.with_for_update(skip_locked=True)

        claimed: list[ClaimedJob] = []
        async with self._write(immediate=True) as connection:
            rows = (await connection.execute(query)).all()
            if not rows:
                return []
            for row in rows:
                if len(claimed) == limit:
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
                        worker_id=worker_id,
                    )
                )
            by_timeout: dict[int, list[int]] = defaultdict(list)
            for job in claimed:
                by_timeout[job.timeout_s].append(job.id)
            for timeout_s, job_ids in by_timeout.items():
                await connection.execute(
                    update(JOBS)
                    .where(JOBS.c.id.in_(job_ids), JOBS.c.status == JOB_QUEUED)
                    .values(
                        status=JOB_RUNNING,
                        lease_owner=worker_id,
                        fence=JOBS.c.fence + 1,
                        attempts=JOBS.c.attempts + 1,
                        started_at=now,
                        heartbeat_at=now,
                        lease_expires_at=now + self.lease,
                        deadline_at=now + timedelta(seconds=timeout_s) + self._deadline_grace,
                    )
                )
            self._boundary("claim.before_commit", claimed[0].id if claimed else 0)
        self._boundary("claim.after_commit", claimed[0].id if claimed else 0)
        return claimed

    # -- lease holder's writes ---------------------------------------------------------------

    async def heartbeat(self, worker_id: str, leases: Iterable[Lease]) -> set[int]:
        """Extend this worker's leases; returns the ids of jobs it no longer holds."""
        held_wanted = {lease.job_id: lease.fence for lease in leases}
        now = utcnow()
        async with self._write() as connection:
            await connection.execute(update(WORKERS).where(WORKERS.c.id == worker_id).values(heartbeat_at=now))
            if not held_wanted:
                return set()
            await connection.execute(
                update(JOBS)
                .where(JOBS.c.lease_owner == worker_id, JOBS.c.status == JOB_RUNNING)
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
        self, items: Sequence[tuple[Lease, dict[str, Any] | None, Sequence[CommitHook]]]
    ) -> set[int]:
        """Group commit: record many successes (each fenced on its own) in one transaction.

        Returns the ids recorded; a stale lease among them is skipped, not fatal. If a hook raises,
        nothing of the batch is written and the error propagates (callers retry items singly).
        """
        checked = [(lease, self._checked_json(result), tuple(hooks)) for lease, result, hooks in items]
        done: set[int] = set()
        if not checked:
            return done
        now = utcnow()
        plain = [(lease, result) for lease, result, hooks in checked if not hooks]
        hooked = [(lease, result, hooks) for lease, result, hooks in checked if hooks]
        async with self._write() as connection:
            fast = False
            if len(plain) > 1:
                # One round trip for the hook-free rows; only if some lease was lost do we redo the
                # batch row by row to learn which (the all-or-nothing check keeps this exact).
                rows = [
                    {"b_id": lease.job_id, "b_owner": lease.worker_id, "b_fence": lease.fence, "b_result": result}
                    for lease, result in plain
                ]
                outcome = await connection.execute(_COMPLETE_MANY.values(finished_at=now), rows)
                if _rowcount(outcome) == len(rows):
                    fast = True
                    done.update(lease.job_id for lease, _result in plain)
                else:
                    await connection.rollback()
            if not fast:
                for lease, result in plain:
                    if await self._complete_one(connection, lease, result, now):
                        done.add(lease.job_id)
            if hooked:
                # Hooks get an ORM session joined to this transaction: their rows commit with the
                # result or not at all.
                hook_session = AsyncSession(bind=connection, expire_on_commit=False)
                for lease, result, hooks in hooked:
                    if await self._complete_one(connection, lease, result, now):
                        done.add(lease.job_id)
                        for hook in hooks:
                            await hook(hook_session)
                await hook_session.flush()
            self._boundary("complete.before_commit", checked[0][0].job_id)
        self._boundary("complete.after_commit", checked[0][0].job_id)
        return done

    async def _complete_one(self, connection: AsyncConnection, lease: Lease, result: Any, now: datetime) -> bool:
        outcome = await connection.execute(
            update(JOBS)
            .where(_lease_matches(lease))
            .values(
                status=JOB_SUCCEEDED,
                result=result,
                error=None,
                finished_at=now,
                lease_expires_at=None,
                deadline_at=None,
            )
        )
        return _rowcount(outcome) == 1

    async def fail(
        self,
        job: ClaimedJob,
        error: str,
        *,
        retry: bool = True,
    ) -> str | None:
        """Record a failed attempt: back to the queue after a backoff, or dead when out of attempts.

        Returns the new status, or None when the lease was already lost (nothing written).
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
        return JOB_DEAD if dead else JOB_QUEUED

    def backoff_s(self, attempts: int) -> float:
        """Exponential backoff before the next attempt, capped."""
        exponent = min(max(attempts - 1, 0), 30)
        return float(min(self.retry_base_s * math.pow(2, exponent), self.retry_max_s))

    async def release(self, lease: Lease) -> bool:
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
            return _rowcount(outcome) == 1

    async def checkpoint(self, lease: Lease, key: str, data: Any, *, kind: str = CHECKPOINT_PARTIAL) -> int:
        """Store (or overwrite) a checkpoint while holding the lease; returns its write count.

        Raises LeaseLostError when the lease is gone, so a stale attempt stops writing.
        """
        self._check_key(key)
        payload = self._checked_json(data)
        now = utcnow()
        async with self._write() as connection:
            await self._touch_lease(connection, lease, now)
            await connection.execute(
                self._upsert_checkpoint(
                    {
                        "job_id": lease.job_id,
                        "key": key,
                        "kind": kind,
                        "seq": 1,
                        "fence": lease.fence,
                        "data": payload,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            )
            self._boundary("checkpoint.before_commit", lease.job_id)
            seq = (
                await connection.execute(
                    select(CHECKPOINTS.c.seq).where(CHECKPOINTS.c.job_id == lease.job_id, CHECKPOINTS.c.key == key)
                )
            ).scalar_one()
        self._boundary("checkpoint.after_commit", lease.job_id)
        return int(seq)

    async def record_step(self, lease: Lease, key: str, data: Any) -> Any:
        """Store a finished step's result once; returns the stored value (first write wins)."""
        self._check_key(key)
        payload = self._checked_json(data)
        now = utcnow()
        row = {
            "job_id": lease.job_id,
            "key": key,
            "kind": CHECKPOINT_STEP,
            "seq": 1,
            "fence": lease.fence,
            "data": payload,
            "created_at": now,
            "updated_at": now,
        }
        async with self._write() as connection:
            await self._touch_lease(connection, lease, now)
            if self.sqlite:
                statement: Any = (
                    sqlite_insert(CHECKPOINTS).values(row).on_conflict_do_nothing(index_elements=["job_id", "key"])
                )
            else:
                statement = mysql_insert(CHECKPOINTS).values(row)
                statement = statement.on_duplicate_key_update(seq=CHECKPOINTS.c.seq)
            await connection.execute(statement)
            self._boundary("step.before_commit", lease.job_id)
            stored = (
                await connection.execute(
                    select(CHECKPOINTS.c.data).where(CHECKPOINTS.c.job_id == lease.job_id, CHECKPOINTS.c.key == key)
                )
            ).scalar_one()
        self._boundary("step.after_commit", lease.job_id)
        return stored

    async def _touch_lease(self, connection: AsyncConnection, lease: Lease, now: datetime) -> None:
        outcome = await connection.execute(
            update(JOBS).where(_lease_matches(lease)).values(heartbeat_at=now, lease_expires_at=now + self.lease)
        )
        if _rowcount(outcome) != 1:
            raise LeaseLostError(
                f"job {lease.job_id}: this worker's lease (fence {lease.fence}) is gone",
                hint="another attempt owns the job now; this one must stop",
            )

    def _upsert_checkpoint(self, row: dict[str, Any]) -> Any:
        if self.sqlite:
            statement = sqlite_insert(CHECKPOINTS).values(row)
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
        insert_statement = mysql_insert(CHECKPOINTS).values(row)
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
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise JobPayloadError(f"value is not JSON-serialisable: {err}") from err
        return value

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
