"""Worker: runs leased jobs concurrently, keeps their leases alive, and records every outcome.

One worker per daemon. It claims only when it has free slots (default 5), most urgent first, never
more than a provider's limit at once; heartbeats extend its leases, and a job whose lease is lost
(reclaimed after a stall, or cancelled) is cancelled locally so two attempts never both finish.
Handlers are at-least-once: after a crash the next attempt starts again, but with the checkpoints
and finished steps of the previous one, and only one attempt's result is ever recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError

from bot.db.models.queue import CHECKPOINT_STEP, JOB_DEAD
from bot.engine.queue.errors import LeaseLostError, PermanentJobError
from bot.engine.queue.store import (
    NOTHING_DEFERRED,
    BatchHook,
    ClaimedJob,
    ClaimRequest,
    CommitHook,
    Deferred,
    JobQueue,
    PendingWrite,
)
from bot.logs import get_logger

log = get_logger(__name__)
_T = TypeVar("_T")

Handler = Callable[["JobContext"], Awaitable[dict[str, Any] | None]]
Admission = Callable[[], bool]
DEFAULT_CONCURRENCY = 5
# Most results recorded in one group commit (bounds one transaction's length).
MAX_COMMIT_GROUP = 64


@dataclass(frozen=True, slots=True)
class QueueEvent:
    """Something that happened to a job, for the engine's event stream and metrics."""

    name: str  # claimed | succeeded | retrying | dead | lease_lost | released | stale_result
    job_id: int
    kind: str
    worker_id: str
    attempt: int
    detail: str = ""


EventCallback = Callable[[QueueEvent], None]


@dataclass(slots=True)
class JobContext:
    """What a handler sees: the job, its saved progress, and durable ways to save more."""

    job: ClaimedJob
    queue: JobQueue
    partials: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    commit_hooks: list[CommitHook] = field(default_factory=list)
    batch_hooks: list[tuple[BatchHook, Any]] = field(default_factory=list)
    # Lazy steps and row writes waiting for this attempt's next durable write (see `defer`).
    lazy_steps: dict[str, Any] = field(default_factory=dict)
    pending_writes: list[PendingWrite] = field(default_factory=list)

    @property
    def payload(self) -> dict[str, Any]:
        """The job's input."""
        return self.job.payload

    @property
    def resumed(self) -> bool:
        """Whether an earlier attempt left progress behind."""
        return bool(self.partials or self.steps)

    def partial(self, key: str, default: Any = None) -> Any:
        """The last checkpointed value under `key` (e.g. streamed output so far)."""
        return self.partials.get(key, default)

    async def checkpoint(self, key: str, data: Any) -> None:
        """Save progress durably; raises LeaseLostError if this attempt no longer owns the job."""
        await self.queue.checkpoint(self.job.lease, key, data, deferred=self.take_deferred())
        self.partials[key] = data

    async def step(self, key: str, run: Callable[[], Awaitable[Any]], *, lazy: bool = False) -> Any:
        """Run a step once per job: a step finished by any attempt returns its stored result.

        A `lazy` step's result is stored with the job's next durable write (a checkpoint, a step,
        the success or the failure) instead of in its own transaction. Use it for cheap steps whose
        result only matters once something durable depends on it (which model was chosen): if the
        attempt dies before that write, nothing depended on it and it is simply run again.
        """
        if key in self.steps:
            return self.steps[key]
        if key in self.lazy_steps:
            return self.lazy_steps[key]
        value = await run()
        if lazy:
            self.lazy_steps[key] = self.queue._checked_json(value)
            return value
        stored = await self.queue.record_step(self.job.lease, key, value, deferred=self.take_deferred())
        self.steps[key] = stored
        return stored

    def defer(self, write: PendingWrite) -> None:
        """Write a row with this attempt's next durable write, in its transaction and fenced by it.

        For rows that describe work the job is doing (its log rows, its usage, a status column):
        one transaction per step instead of one per row, and none written by a stale attempt.
        """
        self.pending_writes.append(write)

    def take_deferred(self) -> Deferred:
        """Hand the waiting lazy steps and writes to a durable write (they are then its business)."""
        if not self.lazy_steps and not self.pending_writes:
            return NOTHING_DEFERRED
        deferred = Deferred(steps=dict(self.lazy_steps), writes=tuple(self.pending_writes))
        self.steps.update(self.lazy_steps)
        self.lazy_steps.clear()
        self.pending_writes.clear()
        return deferred

    def on_commit(self, hook: CommitHook) -> None:
        """Write the caller's own rows in the transaction that records success (exactly once)."""
        self.commit_hooks.append(hook)

    def on_commit_batch(self, hook: BatchHook, item: Any) -> None:
        """Like `on_commit`, but `hook` runs once per group commit with every recorded job's item.

        For result rows many jobs write the same way (one executemany instead of a statement per
        job). `hook` must be the same object for every job (a bound method or a module function);
        a group that fails is retried job by job, so it may also run with a single item.
        """
        self.batch_hooks.append((hook, item))


# The job attempt running in this asyncio task (None outside handlers): lets code deep inside a
# handler (the router's usage hook, the engine's log writer) hand rows to the attempt's next write.
current_job: ContextVar[JobContext | None] = ContextVar("current_job", default=None)


def defer_write(write: PendingWrite) -> bool:
    """Defer `write` to the running job attempt's next durable write; False outside a job."""
    context = current_job.get()
    if context is None:
        return False
    context.defer(write)
    return True


@dataclass(frozen=True, slots=True)
class _Completion:
    job: ClaimedJob
    result: dict[str, Any] | None
    hooks: tuple[CommitHook, ...]
    outcome: asyncio.Future[bool]
    deferred: Deferred = NOTHING_DEFERRED
    batched: tuple[tuple[BatchHook, Any], ...] = ()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def default_worker_id() -> str:
    """host:pid:random — unique per process, so a restarted daemon never reuses a lease owner."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Claims and runs jobs of the kinds it has handlers for until stopped."""

    def __init__(
        self,
        *,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        worker_id: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        provider_limits: Mapping[str, int] | None = None,
        heartbeat_s: float | None = None,
        reclaim_s: float | None = None,
        poll_s: float = 0.5,
        probe_s: float = 0.05,
        admission: Admission | None = None,
        on_event: EventCallback | None = None,
        recover_local_dead_workers: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if poll_s <= 0 or probe_s <= 0:
            raise ValueError("poll_s and probe_s must be positive")
        if not handlers:
            raise ValueError("a worker needs at least one handler")
        self.queue = queue
        self.handlers = dict(handlers)
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency
        self.provider_limits = dict(provider_limits or {})
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else queue.lease_s / 3
        self.reclaim_s = reclaim_s if reclaim_s is not None else queue.lease_s / 2
        self.poll_s = poll_s
        self.probe_s = probe_s
        self.admission = admission
        self.on_event = on_event
        self.recover_local_dead_workers = recover_local_dead_workers
        self._inflight: dict[int, tuple[ClaimedJob, asyncio.Task[None]]] = {}
        # Slots promised to a claim in flight (the claim loop's, or one riding a group commit).
        self._reserved = 0
        self._lost: set[int] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._draining_release = False
        self._completions: list[_Completion] = []
        self._completions_ready = asyncio.Event()
        self._drain_timeout_s = 30.0
        self._started = False
        self.completed = 0

    # -- public control ----------------------------------------------------------------------

    @property
    def running_jobs(self) -> list[ClaimedJob]:
        """Jobs this worker is running right now."""
        return [job for job, _task in self._inflight.values()]

    def wake(self) -> None:
        """Look for work now instead of at the next poll (e.g. right after enqueuing locally)."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and run jobs until `stop()`; returns after in-flight jobs drained."""
        self._started = True
        await self.queue.register_worker(
            self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self.concurrency,
        )
        if self.recover_local_dead_workers:
            await self._recover_dead_local_workers()
        await self.queue.reclaim_expired()
        keeper = asyncio.create_task(self._keep_leases(), name=f"queue-leases-{self.worker_id}")
        flusher = asyncio.create_task(self._flush_completions(), name=f"queue-commits-{self.worker_id}")
        try:
            await self._claim_loop()
        finally:
            try:
                await self._drain()
            finally:
                for helper in (flusher, keeper):
                    helper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper
                with contextlib.suppress(DBAPIError, OSError):
                    await self.queue.worker_stopped(self.worker_id)
                self._stopped.set()

    async def _recover_dead_local_workers(self) -> None:
        """Take back at once the leases of workers on this host whose process is gone.

        A daemon restarted after a crash would otherwise wait a full lease for its own jobs. A pid
        reused by another process only means we wait for expiry as usual; a same-named host
        elsewhere could cause an early, duplicate attempt, which fencing keeps harmless.
        """
        hostname = socket.gethostname()
        for worker_id, pid in await self.queue.live_workers_on(hostname):
            if worker_id == self.worker_id or _process_alive(pid):
                continue
            report = await self.queue.reclaim_worker(
                worker_id, reason=f"worker {worker_id} died (process {pid} is gone)"
            )
            log.info(
                "queue.recovered_dead_worker",
                dead_worker=worker_id,
                requeued=len(report.requeued),
                dead=len(report.dead),
            )

    async def stop(self, *, drain_timeout_s: float = 30.0) -> None:
        """Stop claiming, let running jobs finish for up to `drain_timeout_s`, hand back the rest."""
        self._drain_timeout_s = drain_timeout_s
        self._stopping = True
        self._wake.set()
        if self._started:
            await self._stopped.wait()

    def _free_slots(self, finishing: frozenset[int] = frozenset()) -> int:
        """Slots no running job holds or claim in flight has promised; `finishing` jobs count as free."""
        running = sum(1 for job_id in self._inflight if job_id not in finishing)
        return self.concurrency - running - self._reserved

    # -- loops -------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        kinds = sorted(self.handlers)
        retry_in: float | None = None  # after a failed claim: a short, growing pause (deadlock victim)
        while not self._stopping:
            self._wake.clear()
            free = self._free_slots()
            admitted = self.admission is None or self.admission()
            claimed: list[ClaimedJob] = []
            if free > 0 and admitted:
                self._reserved += free
                try:
                    claimed = await self.queue.claim(
                        self.worker_id, limit=free, kinds=kinds, provider_slots=self._provider_slots()
                    )
                except (DBAPIError, OSError) as err:
                    # Expected when the database restarts or is busy, or picks this claim as a
                    # deadlock victim: log, wait a little (longer each time), try again.
                    log.warning("queue.claim_failed", worker=self.worker_id, error=str(err))
                    retry_in = min(self.poll_s, 0.02 if retry_in is None else retry_in * 2)
                    await asyncio.sleep(retry_in)
                    continue
                finally:
                    self._reserved -= free
                retry_in = None
                for job in claimed:
                    self._start(job)
            if claimed and len(claimed) == free:
                continue  # maybe more work waiting: claim again as soon as a slot frees
            await self._wait_for_work(kinds)

    async def _wait_for_work(self, kinds: list[str]) -> None:
        """Until woken (a slot freed, this process queued work), work is due, or `poll_s` passed.

        Jobs queued by other processes (an `orchestrator worker` beside the daemon, daemons sharing
        MariaDB) wake nobody here. Waiting `poll_s` for them left a worker process idle for up to
        half a second after work arrived; instead, while it has free slots, it asks every
        `probe_s` whether anything is due (a read: no write lock, unlike a claim).
        """
        deadline = time.monotonic() + self.poll_s
        while not self._stopping:
            wait = min(self.probe_s, deadline - time.monotonic())
            if wait <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: that runs the wait in a task of its own
                    await self._wake.wait()
                return
            if self._free_slots() <= 0 or (self.admission is not None and not self.admission()):
                continue
            try:
                if await self.queue.has_claimable(kinds):
                    return
            except (DBAPIError, OSError):
                return  # the claim reports it and waits

    def _provider_slots(self, finishing: frozenset[int] = frozenset()) -> dict[str, int]:
        if not self.provider_limits:
            return {}
        running = Counter(job.provider for job_id, (job, _task) in self._inflight.items() if job_id not in finishing)
        return {provider: limit - running.get(provider, 0) for provider, limit in self.provider_limits.items()}

    async def _keep_leases(self) -> None:
        last_reclaim = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                leases = [job.lease for job, _task in self._inflight.values()]
                lost = await self.queue.heartbeat(self.worker_id, leases)
                for job_id in lost:
                    entry = self._inflight.get(job_id)
                    if entry is not None and not entry[1].done():
                        self._lost.add(job_id)
                        entry[1].cancel()
                if time.monotonic() - last_reclaim >= self.reclaim_s:
                    last_reclaim = time.monotonic()
                    report = await self.queue.reclaim_expired()
                    if report.requeued or report.dead:
                        log.info(
                            "queue.reclaimed",
                            requeued=len(report.requeued),
                            dead=len(report.dead),
                        )
                        self._wake.set()
            except (DBAPIError, OSError) as err:
                # Expected while the database is unreachable; leases may expire meanwhile and the
                # fencing makes that safe.
                log.warning("queue.heartbeat_failed", worker=self.worker_id, error=str(err))

    async def _drain(self) -> None:
        # A group commit in flight when the worker stopped may still start the jobs it claimed:
        # they are waited for (or handed back) like the rest.
        deadline = time.monotonic() + self._drain_timeout_s
        while self._inflight:
            pending = [task for _job, task in self._inflight.values()]
            _done, still_running = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            if still_running:
                self._draining_release = True
                for task in still_running:
                    task.cancel()
                await asyncio.wait(still_running)

    # -- one job -----------------------------------------------------------------------------

    def _start(self, job: ClaimedJob) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        self._inflight[job.id] = (job, task)
        self._emit("claimed", job)

    async def _run_job(self, job: ClaimedJob) -> None:
        try:
            await self._execute(job)
        finally:
            self._inflight.pop(job.id, None)
            self._lost.discard(job.id)
            self._wake.set()

    async def _execute(self, job: ClaimedJob) -> None:
        context = JobContext(job=job, queue=self.queue)
        deadline = asyncio.timeout(job.timeout_s)
        try:
            if job.fence > 1:  # an earlier attempt may have left progress behind
                for key, saved in (await self.queue.checkpoints(job.id)).items():
                    target = context.steps if saved.kind == CHECKPOINT_STEP else context.partials
                    target[key] = saved.data
            token = current_job.set(context)
            try:
                async with deadline:
                    result = await self.handlers[job.kind](context)
            finally:
                current_job.reset(token)
        except asyncio.CancelledError:
            if job.id in self._lost:
                self._emit("lease_lost", job)
                return  # another attempt owns the job now; nothing of ours may be written
            if self._draining_release:
                await asyncio.shield(self.queue.release(job.lease, deferred=context.take_deferred()))
                self._emit("released", job)
                return
            raise
        except LeaseLostError as err:
            self._emit("lease_lost", job, str(err))
            return
        except TimeoutError as err:
            cause = f"timed out after {job.timeout_s} s" if deadline.expired() else repr(err)
            await self._record_failure(job, cause, retry=True, deferred=context.take_deferred())
            return
        except PermanentJobError as err:
            await self._record_failure(job, str(err), retry=False, deferred=context.take_deferred())
            return
        except Exception as err:
            # The job-runner boundary: a handler's bug or a peer's failure must not take the
            # worker down; the attempt is recorded as failed (retried with backoff) with its cause.
            log.exception("queue.handler_failed", job_id=job.id, kind=job.kind)
            await self._record_failure(job, f"{type(err).__name__}: {err}", retry=True,
                                       deferred=context.take_deferred())
            return
        deferred = context.take_deferred()
        try:
            recorded = await self._complete(job, result, context.commit_hooks, deferred, context.batch_hooks)
        except asyncio.CancelledError:
            if self._draining_release:
                await asyncio.shield(self.queue.release(job.lease))  # fenced: no-op if it committed
                return
            raise
        except (DBAPIError, OSError) as err:
            # Expected when the database stays unreachable: the lease will expire and another
            # attempt will run (resuming from checkpoints); log without a traceback.
            log.warning("queue.complete_failed", job_id=job.id, error=str(err))
            return
        except Exception as err:
            # A commit hook raised (the caller's own result write): the attempt failed, retry it.
            log.exception("queue.commit_hook_failed", job_id=job.id, kind=job.kind)
            await self._record_failure(job, f"{type(err).__name__}: {err}", retry=True, deferred=deferred)
            return
        if recorded:
            self.completed += 1
            self._emit("succeeded", job)
        else:
            self._emit("stale_result", job, "lease lost before the result was recorded")

    async def _complete(
        self,
        job: ClaimedJob,
        result: dict[str, Any] | None,
        hooks: list[CommitHook],
        deferred: Deferred,
        batched: list[tuple[BatchHook, Any]],
    ) -> bool:
        """Hand the result to the group-commit flusher and wait for its verdict."""
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._completions.append(
            _Completion(
                job=job, result=result, hooks=tuple(hooks), outcome=outcome, deferred=deferred, batched=tuple(batched)
            )
        )
        self._completions_ready.set()
        return await outcome

    async def _flush_completions(self) -> None:
        """Commit finished jobs in groups: one transaction for all results ready at that moment.

        At concurrency 1 a group is one job and nothing waits; under load, results that finish
        while a commit is in flight ride the next one, so commits per second stop being the limit.
        """
        while True:
            await self._completions_ready.wait()
            self._completions_ready.clear()
            while self._completions:
                batch = self._completions[:MAX_COMMIT_GROUP]
                del self._completions[:MAX_COMMIT_GROUP]
                await self._commit_group(batch)

    async def _commit_group(self, batch: list[_Completion], *, claim: bool = True) -> None:
        live = [item for item in batch if not item.outcome.done()]
        if not live:
            return
        request = self._claim_request(frozenset(item.job.id for item in live)) if claim else None
        reserved = request.limit if request is not None else 0
        self._reserved += reserved
        try:
            try:
                done, claimed = await self._with_db_retries(
                    lambda: self.queue.complete_and_claim(
                        [(item.job.lease, item.result, item.hooks) for item in live],
                        deferred={item.job.id: item.deferred for item in live if item.deferred},
                        batched={item.job.id: item.batched for item in live if item.batched},
                        claim=request,
                    )
                )
            finally:
                self._reserved -= reserved
        except Exception as err:
            # Some hook (or the database) failed the whole group: retry each job alone so one bad
            # result only fails its own job; a lone failure goes back to that job's runner.
            if len(live) == 1:
                if not live[0].outcome.done():
                    live[0].outcome.set_exception(err)
                return
            for item in live:
                await self._commit_group([item], claim=False)
            return
        for item in live:
            if not item.outcome.done():
                item.outcome.set_result(item.job.id in done)
        for job in claimed:
            self._start(job)

    def _claim_request(self, finishing: frozenset[int]) -> ClaimRequest | None:
        """The claim a group commit carries: the slots its jobs free, unless the worker may not claim.

        Jobs run one after another (concurrency 1, or a full worker) otherwise cost a claim
        transaction each: the finished job's commit would wake the claim loop to claim its
        successor in a transaction of its own.
        """
        if self._stopping or not self._started or (self.admission is not None and not self.admission()):
            return None
        free = self._free_slots(finishing)
        if free <= 0:
            return None
        return ClaimRequest(worker_id=self.worker_id, limit=free, kinds=tuple(sorted(self.handlers)),
                            provider_slots=self._provider_slots(finishing))

    async def _with_db_retries(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        # A busy or briefly unreachable database must not cost finished jobs their results: retry
        # a few times (the writes are fenced, so a retry after an unseen commit is refused, not doubled).
        for attempt in range(4):
            try:
                return await operation()
            except (DBAPIError, OSError) as err:
                log.warning("queue.complete_retry", error=str(err))
                await asyncio.sleep(0.1 * 2**attempt)
        return await operation()

    async def _record_failure(
        self, job: ClaimedJob, error: str, *, retry: bool, deferred: Deferred = NOTHING_DEFERRED
    ) -> None:
        status = await self.queue.fail(job, error, retry=retry, deferred=deferred)
        if status is None:
            self._emit("lease_lost", job, error)
        else:
            self._emit("dead" if status == JOB_DEAD else "retrying", job, error)

    def _emit(self, name: str, job: ClaimedJob, detail: str = "") -> None:
        if self.on_event is None:
            return
        self.on_event(
            QueueEvent(
                name=name,
                job_id=job.id,
                kind=job.kind,
                worker_id=self.worker_id,
                attempt=job.attempts,
                detail=detail,
            )
        )
