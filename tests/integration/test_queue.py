"""The durable queue against real databases: ordering, leases, fencing, retries, limits, recovery."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bot.db.base import utcnow
from bot.db.engine import create_engine
from bot.engine.queue import (
    JobContext,
    JobPayloadError,
    JobQueue,
    JobSpec,
    Lease,
    LeaseLostError,
    PermanentJobError,
    QueueEvent,
    Worker,
)
from tests.e2e.queue_worker_proc import (  # noqa: F401  (fixtures)
    RESULTS,
    queue_mariadb_shared,
    queue_sqlite_template,
    queue_url,
)

KIND = "test.job"


async def wait_for(condition: Callable[[], Awaitable[bool]], *, timeout: float = 10.0) -> None:
    """Poll `condition` until true or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


@pytest.fixture
async def engine(queue_url: str) -> AsyncIterator[AsyncEngine]:  # noqa: F811  (a fixture)
    engine = create_engine(queue_url)
    yield engine
    await engine.dispose()


def spec(key: str, **kwargs: Any) -> JobSpec:
    return JobSpec(kind=kwargs.pop("kind", KIND), idempotency_key=key, **kwargs)


class RunningWorker:
    """A Worker running in this event loop, stopped at the end of the test."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.run())

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        await self.worker.stop(drain_timeout_s=drain_timeout_s)
        await self.task


async def statuses(queue: JobQueue, ids: list[int]) -> list[str]:
    return [(await queue.get(job_id)).status for job_id in ids]


# -- enqueue ---------------------------------------------------------------------------------


async def test_enqueue_is_idempotent_on_its_key(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    first, created = await queue.enqueue(spec("subtask:1:execute", payload={"n": 1}))
    again, created_again = await queue.enqueue(spec("subtask:1:execute", payload={"n": 2}))
    assert created
    assert not created_again
    assert first == again
    assert (await queue.get(first)).payload == {"n": 1}  # the first enqueue wins

    ids = await queue.enqueue_many([spec("a"), spec("b"), spec("subtask:1:execute"), spec("a")])
    assert ids["subtask:1:execute"] == first
    assert len(set(ids.values())) == 3
    assert await queue.counts() == {"queued": 3}


async def test_enqueue_rejects_bad_input_and_stores_nothing(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    with pytest.raises(JobPayloadError):
        await queue.enqueue(spec("x" * 256))
    with pytest.raises(JobPayloadError):
        await queue.enqueue(spec(""))
    with pytest.raises(JobPayloadError):
        await queue.enqueue(spec("k", payload={"bad": object()}))
    with pytest.raises(JobPayloadError):
        await queue.enqueue(spec("k", payload={"nan": float("nan")}))
    with pytest.raises(JobPayloadError):
        await queue.enqueue(spec("k", max_attempts=0))
    with pytest.raises(JobPayloadError):
        await queue.enqueue_many([spec("ok"), spec("k", kind="")])
    assert await queue.counts() == {}


# -- claiming --------------------------------------------------------------------------------


async def test_claim_orders_by_priority_then_age(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    ids = await queue.enqueue_many(
        [spec("low", priority=1), spec("high-1", priority=5), spec("mid", priority=3), spec("high-2", priority=5)]
    )
    claimed = await queue.claim("w1", limit=3)
    assert [job.idempotency_key for job in claimed] == ["high-1", "high-2", "mid"]
    assert all(job.fence == 1 and job.attempts == 1 for job in claimed)
    rest = await queue.claim("w2", limit=10)
    assert [job.id for job in rest] == [ids["low"]]
    assert await queue.claim("w3", limit=10) == []


async def test_a_claim_reads_its_batch_in_index_order_without_sorting_the_backlog(engine: AsyncEngine) -> None:
    """The claim's ORDER BY is the claim index's order: no sort over every queued job per claim."""
    queue = JobQueue(engine)
    for kinds in (None, (KIND, "other.kind")):
        claim_sql = str(queue._claim_query(kinds, ()))
        assert "ORDER BY jobs.priority DESC, jobs.id" in claim_sql
        # The claim's shape with its values written in (the plan does not depend on them).
        kind_filter = "" if kinds is None else f" AND kind IN ({', '.join(repr(k) for k in kinds)})"
        sql = (f"SELECT id, kind, payload, priority, attempts FROM jobs WHERE status = 'queued' "
               f"AND available_at <= '2999-01-01 00:00:00'{kind_filter} ORDER BY priority DESC, id LIMIT 8")
        async with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                plan = " ".join(str(row[-1]) for row in await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
                assert "ix_jobs_claim" in plan and "TEMP B-TREE" not in plan, plan
            else:
                rows = (await connection.exec_driver_sql(
                    f"EXPLAIN {sql} FOR UPDATE SKIP LOCKED")).mappings().all()
                assert all("filesort" not in str(row["Extra"]) for row in rows), rows


async def test_claim_respects_kinds_and_provider_slots(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    await queue.enqueue_many(
        [spec(f"lm{i}", provider="lmstudio", priority=9) for i in range(4)]
        + [spec(f"ol{i}", provider="ollama") for i in range(2)]
        + [spec("other", kind="other.kind", priority=99)]
    )
    claimed = await queue.claim("w", limit=10, kinds=[KIND], provider_slots={"lmstudio": 1})
    assert Counter(job.provider for job in claimed) == {"lmstudio": 1, "ollama": 2}
    none_left = await queue.claim("w", limit=10, kinds=[KIND], provider_slots={"lmstudio": 0})
    assert none_left == []


# -- leases, fencing, recovery ---------------------------------------------------------------


async def test_expired_lease_is_reclaimed_with_checkpoints_kept(engine: AsyncEngine) -> None:
    queue = JobQueue(engine, lease_s=1.0)
    job_id, _ = await queue.enqueue(spec("j"))
    [job] = await queue.claim("crashed-worker", limit=1)
    await queue.checkpoint(job.lease, "out", "partial text")

    async def reclaimed() -> bool:
        return (await queue.reclaim_expired()).requeued == (job_id,)

    await wait_for(reclaimed, timeout=5)
    view = await queue.get(job_id)
    assert view.status == "queued"
    assert view.lease_owner is None
    assert "stopped heartbeating" in (view.error or "")
    [again] = await queue.claim("new-worker", limit=1)
    assert again.fence == 2
    assert again.attempts == 1  # an orphaned attempt is refunded
    assert (await queue.checkpoints(job_id))["out"].data == "partial text"


async def test_heartbeat_keeps_a_lease_and_reports_lost_ones(engine: AsyncEngine) -> None:
    queue = JobQueue(engine, lease_s=1.0)
    await queue.enqueue_many([spec("keep"), spec("lose")])
    keep, lose = await queue.claim("w", limit=2)
    assert await queue.cancel(lose.id)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        lost = await queue.heartbeat("w", [keep.lease, lose.lease])
        assert lost == {lose.id}
        assert (await queue.reclaim_expired()).requeued == ()
        await asyncio.sleep(0.2)
    assert (await queue.get(keep.id)).status == "running"


async def test_a_heartbeat_keeps_only_the_leases_the_worker_runs(engine: AsyncEngine) -> None:
    """A job leased to a worker that never started it (its claim's commit went unconfirmed) expires."""
    queue = JobQueue(engine, lease_s=1.0)
    await queue.enqueue_many([spec("runs"), spec("orphan")])
    runs, orphan = await queue.claim("w", limit=2)
    deadline = time.monotonic() + 2.5
    requeued: tuple[int, ...] = ()
    while time.monotonic() < deadline and not requeued:
        assert await queue.heartbeat("w", [runs.lease]) == set()
        requeued = (await queue.reclaim_expired()).requeued
        await asyncio.sleep(0.2)
    assert requeued == (orphan.id,)
    assert (await queue.get(runs.id)).status == "running"
    assert (await queue.get(orphan.id)).status == "queued"


async def test_a_stale_worker_cannot_write_after_its_lease_moved(engine: AsyncEngine) -> None:
    queue = JobQueue(engine, lease_s=1.0)
    job_id, _ = await queue.enqueue(spec("j"))
    [stale] = await queue.claim("slow-worker", limit=1)

    async def reclaimed() -> bool:
        return bool((await queue.reclaim_expired()).requeued)

    await wait_for(reclaimed, timeout=5)
    [fresh] = await queue.claim("fresh-worker", limit=1)

    wrote_row = []

    async def hook(session: AsyncSession) -> None:
        wrote_row.append(True)

    assert not await queue.complete(stale.lease, {"by": "stale"}, hooks=[hook])
    assert wrote_row == []
    with pytest.raises(LeaseLostError):
        await queue.checkpoint(stale.lease, "out", "stale output")
    with pytest.raises(LeaseLostError):
        await queue.record_step(stale.lease, "step", 1)
    assert await queue.fail(stale, "stale failure") is None
    assert not await queue.release(stale.lease)

    assert await queue.complete(fresh.lease, {"by": "fresh"}, hooks=[hook])
    assert not await queue.complete(fresh.lease, {"by": "fresh again"}, hooks=[hook])
    view = await queue.get(job_id)
    assert (view.status, view.result, wrote_row) == ("succeeded", {"by": "fresh"}, [True])
    assert await queue.checkpoints(job_id) == {}


async def test_concurrent_steps_of_one_job_each_get_their_own_result(engine: AsyncEngine) -> None:
    """Steps of one job written in the same group commit: each caller gets its own step's value."""
    queue = JobQueue(engine)
    job_id, _ = await queue.enqueue(spec("two-steps"))
    [job] = await queue.claim("w", limit=1)
    first, second = await asyncio.gather(queue.record_step(job.lease, "reference", {"text": "Paris"}),
                                         queue.record_step(job.lease, "verdict", {"score": 90}))
    assert (first, second) == ({"text": "Paris"}, {"score": 90})
    assert await queue.record_step(job.lease, "reference", {"text": "again"}) == {"text": "Paris"}  # first wins
    stored = await queue.checkpoints(job_id)
    assert {key: (c.kind, c.data) for key, c in stored.items()} == {
        "reference": ("step", {"text": "Paris"}), "verdict": ("step", {"score": 90})}


async def test_batch_hooks_run_once_per_group_with_only_the_recorded_jobs(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    for key in ("a", "b", "c"):
        await queue.enqueue(spec(key))
    first, second, third = await queue.claim("w", limit=3)
    calls: list[list[Any]] = []

    async def write_rows(session: AsyncSession, items: list[Any]) -> None:
        calls.append(list(items))
        await session.execute(RESULTS.insert(), [
            {"job_id": job_id, "idempotency_key": key, "text": key, "worker_id": "w"} for job_id, key in items])

    stale = Lease(job_id=third.id, worker_id="w", fence=third.fence + 1)  # not this attempt's lease
    done = await queue.complete_batch(
        [(first.lease, {}, ()), (second.lease, {}, ()), (stale, {}, ())],
        batched={job.id: [(write_rows, (job.id, job.idempotency_key))] for job in (first, second, third)},
    )
    assert done == {first.id, second.id}
    assert calls == [[(first.id, "a"), (second.id, "b")]]  # one call, job-id order, no stale job

    async def failing(session: AsyncSession, items: list[Any]) -> None:
        raise RuntimeError("the hook's own write failed")

    with pytest.raises(RuntimeError):
        await queue.complete_batch([(third.lease, {"never": True}, ())], batched={third.id: [(failing, None)]})
    assert (await queue.get(third.id)).status == "running"  # nothing of the failed group was written
    async with engine.connect() as connection:
        rows = (await connection.execute(select(RESULTS.c.text).order_by(RESULTS.c.text))).scalars().all()
    assert rows == ["a", "b"]


async def test_a_worker_hands_every_recorded_job_to_its_batch_hook_exactly_once(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    ids = [job_id for job_id, _ in [await queue.enqueue(spec(f"job-{n}")) for n in range(40)]]
    seen: list[int] = []
    groups: list[int] = []

    async def record(session: AsyncSession, items: list[Any]) -> None:
        groups.append(len(items))
        seen.extend(items)

    async def handler(ctx: JobContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        ctx.on_commit_batch(record, ctx.job.id)
        return {}

    running = RunningWorker(Worker(queue=queue, handlers={KIND: handler}, concurrency=16, poll_s=0.05))

    async def all_done() -> bool:
        return set(await statuses(queue, ids)) == {"succeeded"}

    await wait_for(all_done)
    await running.stop()
    assert sorted(seen) == sorted(ids)
    assert len(groups) < len(ids)  # jobs finishing together share one call


async def test_timeout_recovery_by_another_daemon(engine: AsyncEngine) -> None:
    """A job that overruns its timeout is taken back even while its holder keeps heartbeating."""
    queue = JobQueue(engine, lease_s=1.0)
    job_id, _ = await queue.enqueue(spec("slow", timeout_s=1))
    [job] = await queue.claim("hung-worker", limit=1)

    async def reclaimed() -> bool:
        await queue.heartbeat("hung-worker", [job.lease])
        return (await queue.reclaim_expired()).requeued == (job_id,)

    await wait_for(reclaimed, timeout=6)
    assert "timed out" in ((await queue.get(job_id)).error or "")


async def test_work_queued_by_another_process_is_noticed_by_probing_not_after_the_poll(
    engine: AsyncEngine, queue_url: str  # noqa: F811  (a fixture)
) -> None:
    """Another process's enqueue wakes nobody here: an idle worker finds it within a probe interval."""
    worker_queue = JobQueue(engine)
    started: list[float] = []

    async def handler(ctx: JobContext) -> dict[str, Any]:
        started.append(time.monotonic())
        return {}

    running = RunningWorker(Worker(queue=worker_queue, handlers={KIND: handler}, poll_s=60.0, probe_s=0.05))
    await asyncio.sleep(0.3)  # idle: its first claim found nothing and it is waiting
    other_engine = create_engine(queue_url)  # a second engine: another process's connections
    try:
        queued_at = time.monotonic()
        await JobQueue(other_engine).enqueue(spec("from-elsewhere"))
        await wait_for(lambda: asyncio.sleep(0, bool(started)), timeout=10)
    finally:
        await running.stop()
        await other_engine.dispose()
    assert started[0] - queued_at < 5.0  # long before the 60 s poll
    # Not due yet (a retry's back-off): the probe does not count it.
    assert not await worker_queue.has_claimable([KIND])
    await worker_queue.enqueue(spec("later", available_at=utcnow() + timedelta(hours=1)))
    assert not await worker_queue.has_claimable([KIND])
    await worker_queue.enqueue(spec("now"))
    assert await worker_queue.has_claimable([KIND])
    assert not await worker_queue.has_claimable(["another.kind"])


async def test_the_probe_sees_a_job_fall_due_and_other_connections_commits(
    engine: AsyncEngine, queue_url: str  # noqa: F811  (a fixture)
) -> None:
    """On SQLite an unchanged `data_version` answers an idle probe without a query; a job falling
    due with nothing committed, and another connection's claim or enqueue, still change the answer."""
    queue = JobQueue(engine)
    assert not await queue.has_claimable([KIND])
    await queue.enqueue(spec("soon", available_at=utcnow() + timedelta(seconds=0.6)))
    assert not await queue.has_claimable([KIND])
    assert (queue._watch is not None) == queue_url.startswith("sqlite")  # a file: the probe's own connection
    if queue._watch is not None:
        statements: list[str] = []
        queue._watch.set_trace_callback(statements.append)
        assert not await queue.has_claimable([KIND])
        assert statements == ["PRAGMA data_version"]  # nothing committed, nothing due yet
        queue._watch.set_trace_callback(None)
    await asyncio.sleep(0.7)
    assert await queue.has_claimable([KIND])  # due now, though nothing was committed since
    other_engine = create_engine(queue_url)  # another process's connections
    try:
        other = JobQueue(other_engine)
        assert [job.idempotency_key for job in await other.claim("elsewhere", limit=5, kinds=[KIND])] == ["soon"]
        assert not await queue.has_claimable([KIND])  # its commit took the job
        assert not await queue.has_claimable([KIND])
        await other.enqueue(spec("from-elsewhere"))
        assert await queue.has_claimable([KIND])
    finally:
        await other_engine.dispose()


async def test_a_worker_refuses_waits_that_would_spin(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    for bad in ({"poll_s": 0.0}, {"probe_s": 0.0}, {"probe_s": -1.0}):
        with pytest.raises(ValueError, match="must be positive"):
            Worker(queue=queue, handlers={KIND: lambda ctx: asyncio.sleep(0, {})}, **bad)


async def test_worker_timeout_retries_then_succeeds(engine: AsyncEngine) -> None:
    queue = JobQueue(engine, lease_s=2.0, retry_base_s=0.05)
    job_id, _ = await queue.enqueue(spec("hangs-once", timeout_s=1))

    async def handler(ctx: JobContext) -> dict[str, Any]:
        if ctx.job.attempts == 1:
            await asyncio.Event().wait()  # hangs until the worker's timeout cancels it
        return {"attempt": ctx.job.attempts}

    running = RunningWorker(Worker(queue=queue, handlers={KIND: handler}, poll_s=0.05))

    async def done() -> bool:
        return (await queue.get(job_id)).status == "succeeded"

    await wait_for(done, timeout=10)
    await running.stop()
    view = await queue.get(job_id)
    assert view.result == {"attempt": 2}
    assert view.attempts == 2


async def test_retries_with_backoff_then_dead_letter(engine: AsyncEngine) -> None:
    queue = JobQueue(engine, lease_s=5.0, retry_base_s=0.05)
    flaky, _ = await queue.enqueue(spec("flaky", max_attempts=3))
    doomed, _ = await queue.enqueue(spec("doomed", max_attempts=3))
    refused, _ = await queue.enqueue(spec("refused", max_attempts=3))
    events: list[QueueEvent] = []

    async def handler(ctx: JobContext) -> dict[str, Any]:
        if ctx.job.idempotency_key == "refused":
            raise PermanentJobError("the model refused the request")
        if ctx.job.idempotency_key == "flaky" and ctx.job.attempts == 3:
            return {"ok": True}
        raise ConnectionError(f"peer reset on attempt {ctx.job.attempts}")

    running = RunningWorker(Worker(queue=queue, handlers={KIND: handler}, poll_s=0.05, on_event=events.append))

    async def settled() -> bool:
        return await statuses(queue, [flaky, doomed, refused]) == ["succeeded", "dead", "dead"]

    await wait_for(settled, timeout=15)
    await running.stop()
    assert (await queue.get(flaky)).attempts == 3
    dead = await queue.get(doomed)
    assert dead.attempts == 3
    assert "peer reset on attempt 3" in (dead.error or "")
    assert (await queue.get(refused)).attempts == 1
    names = Counter((event.job_id, event.name) for event in events)
    assert names[(doomed, "retrying")] == 2
    assert names[(doomed, "dead")] == 1
    assert names[(refused, "dead")] == 1
    assert names[(flaky, "succeeded")] == 1
    assert queue.backoff_s(1) == 0.05
    assert queue.backoff_s(3) == 0.2

    assert await queue.retry_dead(doomed)
    assert (await queue.get(doomed)).status == "queued"


# -- the worker runtime ----------------------------------------------------------------------


class Gate:
    """Holds handlers until released, counting how many run at once (overall and per provider)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.running: Counter[str | None] = Counter()
        self.total = 0
        self.peak_total = 0
        self.peak: Counter[str | None] = Counter()
        self.order: list[str] = []

    async def handler(self, ctx: JobContext) -> dict[str, Any]:
        provider = ctx.job.provider
        self.order.append(ctx.job.idempotency_key)
        self.running[provider] += 1
        self.total += 1
        self.peak[provider] = max(self.peak[provider], self.running[provider])
        self.peak_total = max(self.peak_total, self.total)
        try:
            await self.open.wait()
        finally:
            self.running[provider] -= 1
            self.total -= 1
        return {"key": ctx.job.idempotency_key}


async def test_at_most_five_run_at_once_most_urgent_first(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    await queue.enqueue_many([spec(f"p{i:02d}", priority=i) for i in range(20)])
    gate = Gate()
    running = RunningWorker(Worker(queue=queue, handlers={KIND: gate.handler}, poll_s=0.05))

    async def five_running() -> bool:
        return gate.total == 5

    await wait_for(five_running)
    assert sorted(gate.order) == ["p15", "p16", "p17", "p18", "p19"]
    assert (await queue.counts())["running"] == 5
    gate.open.set()

    async def all_done() -> bool:
        return await queue.counts() == {"succeeded": 20}

    await wait_for(all_done)
    await running.stop()
    assert gate.peak_total == 5


async def test_a_finished_job_claims_its_successor_in_the_commit_that_records_it(engine: AsyncEngine) -> None:
    """One job after another: each success commit carries the next claim, no claim transaction of its own."""
    boundaries: list[str] = []
    queue = JobQueue(engine, boundary_hook=lambda name, _job_id: boundaries.append(name))
    await queue.enqueue_many([spec(f"s{i}", priority=10 - i) for i in range(6)])
    ran: list[str] = []

    async def handler(ctx: JobContext) -> dict[str, Any]:
        ran.append(ctx.job.idempotency_key)
        return {"key": ctx.job.idempotency_key}

    running = RunningWorker(Worker(queue=queue, handlers={KIND: handler}, concurrency=1, poll_s=0.05))

    async def all_done() -> bool:
        return await queue.counts() == {"succeeded": 6}

    await wait_for(all_done)
    await running.stop()
    assert ran == [f"s{i}" for i in range(6)]  # each once, most urgent first
    transactions = [name for name in boundaries if name.endswith("before_commit")]
    # The first claim is a transaction of its own; every later one rides a success's commit.
    assert transactions[0] == "claim.before_commit"
    riding = [i for i, name in enumerate(transactions) if name == "claim.before_commit" and i > 0]
    assert len(riding) == 5
    assert all(transactions[i + 1] == "complete.before_commit" for i in riding)
    assert transactions.count("complete.before_commit") == 6


async def test_per_provider_concurrency_limits(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    await queue.enqueue_many(
        [spec(f"lm{i}", provider="lmstudio", priority=5) for i in range(8)]
        + [spec(f"ol{i}", provider="ollama") for i in range(8)]
    )
    gate = Gate()
    running = RunningWorker(
        Worker(
            queue=queue,
            handlers={KIND: gate.handler},
            concurrency=5,
            provider_limits={"lmstudio": 2},
            poll_s=0.05,
        )
    )

    async def full() -> bool:
        return gate.total == 5

    await wait_for(full)
    assert gate.running["lmstudio"] == 2
    assert gate.running["ollama"] == 3
    gate.open.set()

    async def all_done() -> bool:
        return await queue.counts() == {"succeeded": 16}

    await wait_for(all_done)
    await running.stop()
    assert gate.peak["lmstudio"] == 2
    assert gate.peak_total == 5


async def test_admission_hook_pauses_claiming(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    job_id, _ = await queue.enqueue(spec("waits"))
    admitted = False
    handled: list[int] = []

    async def handler(ctx: JobContext) -> dict[str, Any]:
        handled.append(ctx.job.id)
        return {}

    worker = Worker(queue=queue, handlers={KIND: handler}, poll_s=0.02, admission=lambda: admitted)
    running = RunningWorker(worker)
    for _ in range(10):  # several claim rounds pass while admission is closed
        await asyncio.sleep(0.02)
        assert (await queue.get(job_id)).status == "queued"
    admitted = True
    worker.wake()

    async def done() -> bool:
        return (await queue.get(job_id)).status == "succeeded"

    await wait_for(done)
    await running.stop()
    assert handled == [job_id]


async def test_cancel_queued_and_running_jobs(engine: AsyncEngine) -> None:
    queue = JobQueue(engine, lease_s=1.0)
    queued_id, _ = await queue.enqueue(spec("never-runs", priority=-1))
    running_id, _ = await queue.enqueue(spec("runs", priority=5))
    assert await queue.cancel(queued_id)
    started = asyncio.Event()
    events: list[QueueEvent] = []

    async def handler(ctx: JobContext) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()
        return {}

    running = RunningWorker(Worker(queue=queue, handlers={KIND: handler}, poll_s=0.05, on_event=events.append))
    await asyncio.wait_for(started.wait(), timeout=5)
    assert await queue.cancel(running_id, reason="user cancelled")

    async def lease_lost() -> bool:
        return any(event.name == "lease_lost" for event in events)

    await wait_for(lease_lost)
    await running.stop()
    assert await statuses(queue, [queued_id, running_id]) == ["cancelled", "cancelled"]
    assert not await queue.cancel(running_id)
    assert [event.job_id for event in events if event.name == "claimed"] == [running_id]


async def test_graceful_stop_hands_back_unfinished_jobs(engine: AsyncEngine) -> None:
    queue = JobQueue(engine)
    job_id, _ = await queue.enqueue(spec("long"))
    started = asyncio.Event()

    async def handler(ctx: JobContext) -> dict[str, Any]:
        await ctx.checkpoint("out", "half")
        started.set()
        await asyncio.Event().wait()
        return {}

    running = RunningWorker(Worker(queue=queue, handlers={KIND: handler}, poll_s=0.05))
    await asyncio.wait_for(started.wait(), timeout=5)
    await running.stop(drain_timeout_s=0.1)
    view = await queue.get(job_id)
    assert (view.status, view.attempts, view.lease_owner) == ("queued", 0, None)
    assert (await queue.checkpoints(job_id))["out"].data == "half"


async def test_a_stop_during_a_commit_that_claims_still_drains_what_it_claimed(engine: AsyncEngine) -> None:
    """Stopped while a success commit (carrying the next claim) runs: the claimed job is not orphaned."""
    stopping: list[asyncio.Task[None]] = []
    holder: list[Worker] = []

    def boundary(name: str, _job_id: int) -> None:
        if name == "complete.before_commit" and not stopping:
            stopping.append(asyncio.get_running_loop().create_task(holder[0].stop(drain_timeout_s=0.2)))

    queue = JobQueue(engine, boundary_hook=boundary)
    ids = [job_id for job_id, _ in [await queue.enqueue(spec(f"d{i}", priority=9 - i)) for i in range(2)]]
    second_started = asyncio.Event()

    async def handler(ctx: JobContext) -> dict[str, Any]:
        if ctx.job.idempotency_key == "d1":
            second_started.set()
            await asyncio.Event().wait()  # still running when the drain times out: handed back
        return {"key": ctx.job.idempotency_key}

    worker = Worker(queue=queue, handlers={KIND: handler}, concurrency=1, poll_s=0.05)
    holder.append(worker)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(run, timeout=10)
    await stopping[0]
    assert second_started.is_set()  # the commit claimed it and the worker started it while stopping
    first, second = [await queue.get(job_id) for job_id in ids]
    assert first.status == "succeeded"
    assert (second.status, second.attempts, second.lease_owner) == ("queued", 0, None)


async def test_resumed_attempt_continues_from_checkpoint_and_skips_done_steps(
    engine: AsyncEngine,
) -> None:
    queue = JobQueue(engine, retry_base_s=0.05)
    job_id, _ = await queue.enqueue(spec("resumable", payload={"words": ["a", "b", "c", "d"]}))
    step_runs: Counter[str] = Counter()
    seen_partials: list[Any] = []

    async def handler(ctx: JobContext) -> dict[str, Any]:
        async def plan() -> list[str]:
            step_runs["plan"] += 1
            return list(ctx.payload["words"])

        words = await ctx.step("plan", plan)
        done: list[str] = ctx.partial("out", [])
        seen_partials.append(list(done))
        for word in words[len(done) :]:
            done = [*done, word]
            await ctx.checkpoint("out", done)
            if ctx.job.attempts == 1 and len(done) == 2:
                raise ConnectionResetError("stream dropped")

        async def write_row(session: AsyncSession) -> None:
            await session.execute(
                RESULTS.insert().values(
                    job_id=ctx.job.id,
                    idempotency_key=ctx.job.idempotency_key,
                    text="".join(done),
                    worker_id=ctx.job.worker_id,
                )
            )

        ctx.on_commit(write_row)
        return {"text": "".join(done)}

    running = RunningWorker(Worker(queue=queue, handlers={KIND: handler}, poll_s=0.05))

    async def done_() -> bool:
        return (await queue.get(job_id)).status == "succeeded"

    await wait_for(done_)
    await running.stop()
    assert seen_partials == [[], ["a", "b"]]
    assert step_runs == {"plan": 1}
    assert (await queue.get(job_id)).result == {"text": "abcd"}
    saved = await queue.checkpoints(job_id)
    assert saved["plan"].kind == "step"
    assert saved["out"].seq == 4
    async with engine.connect() as connection:
        rows = (await connection.execute(select(RESULTS.c.text))).scalars().all()
    assert rows == ["abcd"]


async def test_dead_local_worker_leases_are_recovered_at_start(engine: AsyncEngine) -> None:
    """A restarted daemon takes back its dead predecessor's jobs without waiting for expiry."""
    import socket
    import subprocess

    queue = JobQueue(engine, lease_s=300)
    job_id, _ = await queue.enqueue(spec("orphan"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead_worker = f"{socket.gethostname()}:{gone.pid}:deadbeef"
    await queue.register_worker(dead_worker, hostname=socket.gethostname(), pid=gone.pid, concurrency=5)
    await queue.claim(dead_worker, limit=1)

    async def handler(ctx: JobContext) -> dict[str, Any]:
        return {"attempt": ctx.job.attempts}

    running = RunningWorker(Worker(queue=queue, handlers={KIND: handler}, poll_s=0.05))

    async def done() -> bool:
        return (await queue.get(job_id)).status == "succeeded"

    await wait_for(done, timeout=5)
    await running.stop()
    view = await queue.get(job_id)
    assert view.result == {"attempt": 1}
    assert view.fence == 2


async def test_a_job_that_keeps_killing_workers_is_dead_lettered(engine: AsyncEngine) -> None:
    """Orphaned attempts are refunded, but not forever: 3 x max_attempts orphaned claims is poison."""
    queue = JobQueue(engine)
    job_id, _ = await queue.enqueue(spec("poison", max_attempts=2))
    outcomes = []
    for round_ in range(6):
        [job] = await queue.claim(f"w{round_}", limit=1)
        assert job.attempts == 1
        report = await queue.reclaim_worker(f"w{round_}", reason="worker died")
        outcomes.append("dead" if report.dead else "requeued")
        if report.dead:
            break
    assert outcomes == ["requeued"] * 5 + ["dead"]
    view = await queue.get(job_id)
    assert view.status == "dead"
    assert "gave up after 6 orphaned claims" in (view.error or "")


async def test_a_sqlite_writer_waits_for_another_connections_write_lock(
    queue_sqlite_template: Path, tmp_path: Path  # noqa: F811  (a fixture)
) -> None:
    """Another process holding SQLite's write lock delays the queue's writes; it does not break them.

    SQLite only: MariaDB locks rows, which the claim races cover.
    """
    import shutil
    import sqlite3

    path = tmp_path / "queue.db"
    shutil.copyfile(queue_sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="locked"):  # a writer that will not wait that long
            await JobQueue(engine, busy_wait_s=0.05).enqueue(spec("impatient"))
        waiting = asyncio.create_task(JobQueue(engine).enqueue(spec("after-the-lock")))
        await asyncio.sleep(0.15)
        assert not waiting.done()  # waiting for the lock, asynchronously: this loop still runs
        holder.execute("COMMIT")
        job_id, created = await asyncio.wait_for(waiting, timeout=5)
        assert created
        # The writer's connection that gave up first is in a clean state: the next write goes through.
        assert (await JobQueue(engine, busy_wait_s=0.05).enqueue(spec("next")))[1]
        assert (await JobQueue(engine).get(job_id)).status == "queued"
    finally:
        holder.close()
        await engine.dispose()


async def test_a_commit_sqlite_refuses_is_rolled_back_and_the_writer_goes_on(
    queue_sqlite_template: Path, tmp_path: Path  # noqa: F811  (a fixture)
) -> None:
    """The writer commits on sqlite3 itself: a refused commit is raised as SQLAlchemy's error,
    leaves nothing behind, and the next write goes through on the same kept connection."""
    import shutil
    import sqlite3

    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from bot.db.direct import execute_sql

    path = tmp_path / "queue.db"
    shutil.copyfile(queue_sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    queue = JobQueue(engine)

    async def orphan_step() -> None:
        async with queue.transaction() as connection:
            # Checked at COMMIT, not at the INSERT: the commit itself is what fails.
            await execute_sql(connection, "PRAGMA defer_foreign_keys = ON")
            await connection.execute(text(
                "INSERT INTO job_checkpoints (job_id, key, kind, seq, fence, data, created_at, updated_at) "
                "VALUES (424242, 'orphan', 'step', 1, 0, '{}', '2026-01-01', '2026-01-01')"))

    try:
        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            await orphan_step()
        job_id, created = await queue.enqueue(spec("after-a-refused-commit"))
        assert created
        with sqlite3.connect(path) as raw:
            assert raw.execute("SELECT count(*) FROM job_checkpoints").fetchone() == (0,)
            assert raw.execute("SELECT count(*) FROM jobs WHERE id = ?", (job_id,)).fetchone() == (1,)
    finally:
        await engine.dispose()


async def test_a_write_ended_through_sqlalchemy_leaves_the_writer_usable(
    queue_sqlite_template: Path, tmp_path: Path  # noqa: F811  (a fixture)
) -> None:
    """A caller that rolls back through SQLAlchemy (as a lost lease's completion does) ends the
    transaction on both sides; the kept connection opens SQLAlchemy's side again next time."""
    import shutil

    path = tmp_path / "queue.db"
    shutil.copyfile(queue_sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    queue = JobQueue(engine)
    try:
        async with queue.transaction() as connection:
            await queue.enqueue_in(connection, [spec("rolled-back")])
            await connection.rollback()
        assert await queue.counts() == {}
        _job_id, created = await queue.enqueue(spec("kept"))
        assert created
        assert await queue.counts() == {"queued": 1}
    finally:
        await engine.dispose()


async def test_the_writer_closes_its_kept_connection_when_collected(
    queue_sqlite_template: Path, tmp_path: Path  # noqa: F811  (a fixture)
) -> None:
    """No pool warning (warnings are errors here) and no open sqlite3 connection left behind."""
    import gc
    import shutil
    import sqlite3
    import warnings

    from bot.db.engine import inline_sqlite_connection, sqlite_writer

    path = tmp_path / "queue.db"
    shutil.copyfile(queue_sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await JobQueue(engine).enqueue(spec("one"))
    writer = sqlite_writer(engine)
    assert writer is not None
    async with writer.lock:
        raw = inline_sqlite_connection(await writer.connection())
    assert raw is not None
    await engine.dispose()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del writer, engine
        gc.collect()
    assert not caught, [str(w.message) for w in caught]
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        raw.execute("SELECT 1")
