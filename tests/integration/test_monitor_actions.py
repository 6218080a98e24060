"""Recorded sample streams drive the real monitor into real actions: unload calls at a local LM
Studio peer, admission paused and resumed on the real queue, incidents and alerts in the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db.engine import create_engine, session_factory
from bot.db.models.enums import AlertStatus, IncidentStatus
from bot.db.models.operations import Alert, Incident, MetricSample
from bot.engine.providers.lmstudio import LMStudioProvider
from bot.engine.queue import JobContext, JobQueue, JobSpec, Worker
from bot.events import Event, EventBus
from bot.monitor import Monitor, MonitorSettings, MonitorState, ReplaySource
from bot.monitor.rules import Phase
from tests.fakes import FakeLMStudio

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


async def holds_for(predicate: Callable[[], Any], *, seconds: float) -> bool:
    """Whether `predicate` stays true for `seconds` (checked every 20 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if not result:
            return False
        await asyncio.sleep(0.02)
    return True


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


async def rows(sessions: async_sessionmaker[AsyncSession], model: Any, *conditions: Any) -> list[Any]:
    async with sessions() as session:
        return list((await session.execute(select(model).where(*conditions))).scalars())


async def test_ram_pressure_unloads_idle_models_at_the_lm_studio_peer(
    database: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], tmp_path: Path
) -> None:
    _engine, sessions = database
    async with FakeLMStudio() as lms:
        lms.script("idle-7b")
        lms.script("busy-3b")
        lms.script("cold-1b", loaded=False)
        provider = LMStudioProvider(name="lms", base_url=lms.url)
        bus = EventBus()
        events = bus.subscribe(topics={"monitor"}, maxsize=10_000)
        source = ReplaySource.from_file(FIXTURES / "ram_pressure.jsonl")
        monitor = Monitor(
            settings=MonitorSettings(interval_s=0.05, health_interval_s=0.2),
            data_dir=tmp_path,
            sessions=sessions,
            bus=bus,
            providers=lambda: [provider],
            probes=[source],
            clock=source.clock,
        )
        try:
            with monitor.state.using_model("lms", "busy-3b"):  # a request is running on this one
                await monitor.start()
                # The notice is announced after the action finished, so the busy mark was seen.
                await wait_for(lambda: [n.state for n in monitor.rules.notices] == ["fired"], what="ram_high fired")
                assert monitor.state.memory_pressure is True
            await wait_for(lambda: monitor.rules.states["ram_high"].phase is Phase.IDLE and not source.remaining)
        finally:
            await monitor.stop()
            await provider.aclose()

        unloads = [call.body for call in lms.calls("/api/v1/models/unload")]
        assert unloads == [{"instance_id": "idle-7b"}]
        assert lms.loaded_instance_ids("busy-3b") == ["busy-3b"]
        assert monitor.state.memory_pressure is False

    (incident,) = await rows(sessions, Incident, Incident.kind == "monitor.ram_high")
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.resolved_at is not None
    steps = [(entry["action"], entry["outcome"]) for entry in incident.actions]
    assert steps[0] == ("unload_idle_models", "unloaded lms/idle-7b; kept busy lms/busy-3b")
    assert steps[1][0] == "undo unload_idle_models"
    assert steps[2][0] == "resolved"
    (alert,) = await rows(sessions, Alert, Alert.kind == "monitor.ram_high")
    assert alert.status == AlertStatus.RESOLVED
    assert alert.open_key is None
    assert incident.alert_id == alert.id
    assert "pt-BR" in alert.data["messages"]

    received: list[Event] = []
    while events.pending():
        received.append(await asyncio.wait_for(events.get(), 1))
    kinds = [event.kind for event in received]
    assert kinds.count("alert") == 1
    assert kinds.count("alert_cleared") == 1
    assert kinds.count("sample") >= 60
    fired = next(event for event in received if event.kind == "alert")
    assert fired.payload["rule"] == "ram_high"
    assert fired.payload["incident_id"] == incident.id
    sample = next(event for event in received if event.kind == "sample")
    assert sample.payload["readings"]["gpu.nvidia"]["unavailable"].startswith("NVML unavailable")

    # The per-minute history reached the database (the recording spans a minute boundary).
    history = await rows(sessions, MetricSample, MetricSample.metric == "ram.percent")
    assert history
    assert all(0.0 < point.value <= 100.0 for point in history)


async def test_cpu_pressure_pauses_admission_on_the_real_queue_then_resumes(
    database: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], tmp_path: Path
) -> None:
    engine, sessions = database
    queue = JobQueue(engine, lease_s=5.0)
    finished: list[int] = []

    async def echo(context: JobContext) -> dict[str, Any]:
        finished.append(context.job.id)
        return {"echo": context.payload}

    source = ReplaySource.from_file(FIXTURES / "cpu_spike.jsonl")
    state = MonitorState()
    worker = Worker(queue=queue, handlers={"echo": echo}, admission=state.admit, poll_s=0.05)
    monitor = Monitor(
        settings=MonitorSettings(),
        data_dir=tmp_path,
        sessions=sessions,
        probes=[source],
        queue=queue,
        state=state,
        on_admission_resumed=worker.wake,
        clock=source.clock,
    )
    running = asyncio.create_task(worker.run())
    try:

        async def step() -> None:
            await monitor.rules.process(await monitor.sampler.sample_once())

        for _ in range(36):  # 5 s calm + 30 s above 80 % + the tick that fires
            await step()
        assert monitor.state.admit() is False
        assert monitor.state.admission_reason == "cpu.percent at 92.0 > 80"

        job_id, _new = await queue.enqueue(JobSpec(kind="echo", idempotency_key="monitor:paused", payload={"n": 1}))
        worker.wake()

        async def still_queued() -> bool:
            return (await queue.get(job_id)).status == "queued"

        assert await holds_for(still_queued, seconds=0.6), "a job started while admission was paused"

        while source.remaining:
            await step()
        assert monitor.state.admit() is True
        await wait_for(lambda: job_id in finished, what="the job to run after admission resumed")
        await wait_for(_status_is(queue, job_id, "succeeded"), what="the job to succeed")
    finally:
        await worker.stop(drain_timeout_s=5)
        await running

    (incident,) = await rows(sessions, Incident, Incident.kind == "monitor.cpu_high")
    assert incident.status == IncidentStatus.RESOLVED
    assert [entry["action"] for entry in incident.actions] == ["pause_admission", "undo pause_admission", "resolved"]
    assert incident.actions[1]["outcome"] == "admission of new tasks resumed"


def _status_is(queue: JobQueue, job_id: int, status: str) -> Callable[[], Any]:
    async def check() -> bool:
        return (await queue.get(job_id)).status == status

    return check


async def test_disk_rule_cleans_the_data_dir_and_records_it(
    sqlite_database: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], tmp_path: Path
) -> None:
    _engine, sessions = sqlite_database
    data_dir = tmp_path / "data"
    old_log = data_dir / "logs" / "daemon.log.3"
    old_log.parent.mkdir(parents=True)
    old_log.write_bytes(b"x" * 2048)
    import os

    os.utime(old_log, (time.time() - 60 * 86_400,) * 2)
    keep = data_dir / "orchestrator.db.bak"
    keep.write_bytes(b"keep")
    source = ReplaySource.from_file(FIXTURES / "disk_full.jsonl")
    notices: list[Any] = []

    async def on_alert(notice: Any) -> None:
        notices.append(notice)

    monitor = Monitor(
        settings=MonitorSettings(),
        data_dir=data_dir,
        sessions=sessions,
        probes=[source],
        clock=source.clock,
        on_alert=on_alert,
    )
    while source.remaining:
        await monitor.rules.process(await monitor.sampler.sample_once())
    assert not old_log.exists()
    assert keep.exists()
    assert [(n.rule, n.state) for n in notices] == [("disk_high", "fired"), ("disk_high", "cleared")]
    assert "deleted 1 files" in notices[0].outcome
    (incident,) = await rows(sessions, Incident, Incident.kind == "monitor.disk_high")
    assert incident.actions[0]["action"] == "clean_disk"
    assert incident.status == IncidentStatus.RESOLVED


async def test_a_restart_closes_incidents_left_open_by_the_previous_process(
    sqlite_database: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], tmp_path: Path
) -> None:
    _engine, sessions = sqlite_database
    source = ReplaySource.from_file(FIXTURES / "cpu_spike.jsonl")
    first = Monitor(
        settings=MonitorSettings(), data_dir=tmp_path, sessions=sessions, probes=[source], clock=source.clock
    )
    for _ in range(40):
        await first.rules.process(await first.sampler.sample_once())
    assert first.state.admission_paused  # then the process "dies" without clearing
    (open_alert,) = await rows(sessions, Alert, Alert.open_key == "monitor:cpu_high")
    second = Monitor(
        settings=MonitorSettings(interval_s=0.05),
        data_dir=tmp_path,
        sessions=sessions,
        probes=[ReplaySource.from_file(FIXTURES / "real_host.jsonl", loop=True)],
    )
    await second.start()
    await second.stop()
    (incident,) = await rows(sessions, Incident, Incident.kind == "monitor.cpu_high")
    assert incident.status == IncidentStatus.RESOLVED
    assert "daemon restarted" in incident.actions[-1]["outcome"]
    assert await rows(sessions, Alert, Alert.open_key == "monitor:cpu_high") == []
    assert second.state.admit() is True
    del open_alert
