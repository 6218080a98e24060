"""Health checks: a stuck job is recovered, a failed component restarted, and systemd's watchdog
fed only while the daemon is healthy (a real NOTIFY_SOCKET datagram socket receives the pings)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db.engine import create_engine, session_factory
from bot.db.models.enums import AlertStatus, IncidentStatus
from bot.db.models.operations import Alert, Incident
from bot.engine.providers.lmstudio import LMStudioProvider
from bot.engine.queue import JobContext, JobQueue, JobSpec, Worker
from bot.monitor import HealthMonitor, Monitor, MonitorSettings, ReplaySource
from bot.monitor.health import DatabaseCheck, ProviderCheck, QueueProgressCheck
from bot.monitor.monitor import SamplerCheck
from bot.monitor.sampler import Sampler
from bot.monitor.store import MonitorStore
from bot.systemd import notify

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "monitor"


async def wait_for(predicate: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def sqlite_database(sqlite_url: str) -> AsyncIterator[tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]:
    """SQLite only, for behaviour that does not depend on the backend (the backend-sensitive
    tests above run on both)."""
    from bot.db.migrate import upgrade_to_head

    await upgrade_to_head(sqlite_url, backup_dir=None)
    engine = create_engine(sqlite_url)
    try:
        yield engine, session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def database(migrated_db: str) -> AsyncIterator[tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]:
    engine = create_engine(migrated_db)
    try:
        yield engine, session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """What systemd provides: a unix datagram socket named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield listener
    finally:
        listener.close()


def received(listener: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(listener.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_a_stuck_job_is_recovered_and_runs_to_completion(
    database: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    engine, sessions = database
    queue = JobQueue(engine, lease_s=0.3)
    job_id, _ = await queue.enqueue(JobSpec(kind="echo", idempotency_key="health:stuck", payload={"n": 7}))
    # A worker claims the job and then hangs: no heartbeat ever comes (its lease runs out).
    (claimed,) = await queue.claim("hung-worker", limit=1)
    assert claimed.id == job_id
    health = HealthMonitor(store=MonitorStore(sessions))
    health.register(QueueProgressCheck(queue=queue))

    async def recovered() -> bool:
        report = await health.run_once()
        return bool(report.results["queue"].recovered)

    await wait_for(recovered, timeout=10, what="the stuck job to be reclaimed")
    assert (await queue.get(job_id)).status == "queued"
    async with sessions() as session:
        (incident,) = (
            await session.execute(select(Incident).where(Incident.kind == "health.queue.recovered"))
        ).scalars()
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.actions[0]["outcome"] == f"job {job_id} requeued after it got stuck"

    done = asyncio.Event()

    async def echo(context: JobContext) -> dict[str, Any]:
        done.set()
        return {"n": context.payload["n"]}

    worker = Worker(queue=queue, handlers={"echo": echo}, poll_s=0.05)
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(done.wait(), timeout=10)

        async def succeeded() -> bool:
            return (await queue.get(job_id)).status == "succeeded"

        await wait_for(succeeded, what="the recovered job to succeed")
    finally:
        await worker.stop(drain_timeout_s=5)
        await running
    assert (await queue.get(job_id)).result == {"n": 7}


async def test_a_stalled_queue_is_unhealthy_and_its_worker_restarted(
    sqlite_database: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    engine, sessions = sqlite_database
    queue = JobQueue(engine, lease_s=5.0)
    await queue.enqueue(JobSpec(kind="echo", idempotency_key="health:stalled"))
    workers: list[Worker] = []
    tasks: list[asyncio.Task[None]] = []

    async def echo(context: JobContext) -> dict[str, Any]:
        return {}

    async def restart_worker() -> None:
        worker = Worker(queue=queue, handlers={"echo": echo}, poll_s=0.05)
        workers.append(worker)
        tasks.append(asyncio.create_task(worker.run()))

    clock = [0.0]
    health = HealthMonitor(store=MonitorStore(sessions), restart_after_failures=1)
    health.register(QueueProgressCheck(queue=queue, stall_after_s=60, clock=lambda: clock[0]), restart=restart_worker)
    try:
        assert (await health.run_once()).healthy
        clock[0] = 61.0  # a minute with work waiting and no worker claiming it
        report = await health.run_once()
        assert not report.healthy
        assert "stalled" in report.results["queue"].detail
        assert report.restarted == ("queue",)

        async def drained() -> bool:
            return (await queue.counts()).get("succeeded", 0) == 1

        await wait_for(drained, what="the restarted worker to run the job")
        clock[0] = 62.0
        assert (await health.run_once()).healthy
    finally:
        for worker in workers:
            await worker.stop(drain_timeout_s=5)
        await asyncio.gather(*tasks)
    async with sessions() as session:
        (incident,) = (await session.execute(select(Incident).where(Incident.kind == "health.queue"))).scalars()
        (alert,) = (await session.execute(select(Alert).where(Alert.kind == "health"))).scalars()
    assert incident.status == IncidentStatus.RESOLVED
    assert [entry["action"] for entry in incident.actions] == ["restart", "resolved"]
    assert alert.status == AlertStatus.RESOLVED


async def test_watchdog_is_fed_only_while_healthy(
    sqlite_database: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], notify_socket: socket.socket
) -> None:
    _engine, sessions = sqlite_database
    source = ReplaySource.from_file(FIXTURES / "real_host.jsonl", loop=True)
    clock = [source.clock()]
    sampler = Sampler(probes=[source], clock=lambda: clock[0])
    health = HealthMonitor(store=MonitorStore(sessions), feed_watchdog=lambda: notify("WATCHDOG=1"))
    health.register(SamplerCheck(sampler, stale_after_s=5, clock=lambda: clock[0]), restart=None)
    health.register(DatabaseCheck(MonitorStore(sessions)))
    # A provider that is down is reported but is not a reason for systemd to restart us.
    down = LMStudioProvider(name="down", base_url="http://127.0.0.1:9")
    health.register(ProviderCheck(down))
    try:
        report = await health.run_once()  # no sample yet, but within the start-up grace
        assert report.healthy
        assert report.results["sampler"].detail == "waiting for the first sample"
        assert received(notify_socket) == ["WATCHDOG=1"]
        clock[0] += 6  # still no sample 6 s later: the sampler is stuck, so we are unhealthy
        report = await health.run_once()
        assert not report.healthy
        assert not report.results["provider:down"].ok
        assert received(notify_socket) == []

        await sampler.sample_once()
        report = await health.run_once()
        assert report.healthy
        assert report.fed_watchdog
        assert received(notify_socket) == ["WATCHDOG=1"]
        assert await health.is_healthy()

        # The database goes away: critical, so the watchdog starves and systemd will restart us.
        unreachable = create_engine("mysql+aiomysql://root@127.0.0.1:1/nothing")
        health.unregister("database")
        health.register(DatabaseCheck(MonitorStore(session_factory(unreachable))))
        try:
            report = await health.run_once()
        finally:
            await unreachable.dispose()
        assert not report.healthy
        assert not report.results["database"].ok
        assert received(notify_socket) == []
        assert health.watchdog_feeds == 2
        assert await health.is_healthy() is False
    finally:
        await down.aclose()


async def test_a_hung_sampler_is_restarted_by_the_health_checks(
    sqlite_database: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], notify_socket: socket.socket, tmp_path: Path
) -> None:
    _engine, sessions = sqlite_database
    settings = MonitorSettings(interval_s=0.05, health_interval_s=0.1, restart_after_failures=2)
    monitor = Monitor(
        settings=settings,
        data_dir=tmp_path,
        sessions=sessions,
        probes=[ReplaySource.from_file(FIXTURES / "real_host.jsonl", loop=True)],
        feed_watchdog=lambda: notify("WATCHDOG=1"),
    )
    pings: list[str] = []

    async def drain() -> None:  # as systemd does: read every notification as it arrives
        while True:
            pings.extend(received(notify_socket))
            await asyncio.sleep(0.01)

    reader = asyncio.create_task(drain())
    await monitor.start()
    try:
        await wait_for(lambda: "WATCHDOG=1" in pings, what="a first watchdog ping")
        await monitor.sampler.stop_loop()  # the sampling loop dies
        ticks = monitor.sampler.ticks
        # Samples go stale (the check allows 5 s), the check fails twice, and the loop is restarted.
        await wait_for(
            lambda: monitor.sampler.running and monitor.sampler.ticks > ticks + 3,
            timeout=30,
            what="the sampler to be restarted",
        )
        fed_before = len(pings)
        await wait_for(lambda: len(pings) > fed_before, what="the watchdog fed again once healthy")
    finally:
        await monitor.stop()
        reader.cancel()
    async with sessions() as session:
        (incident,) = (await session.execute(select(Incident).where(Incident.kind == "health.sampler"))).scalars()
    assert [entry["action"] for entry in incident.actions][:1] == ["restart"]
    assert incident.severity.value == "critical"
