"""Model discovery into ai_models / model_discovery, the TTL cache, scheduling, and credit_usage.

Runs on SQLite and MariaDB (`migrated_db`), against a fake LM Studio with the real client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.engine import create_engine, session_factory
from bot.db.models import AiModel, AiProvider, CreditUsage, DiscoveryEvent, HealthStatus, ModelDiscovery, ProviderKind
from bot.engine.providers.lmstudio import LMStudioProvider
from bot.engine.providers.port import ChatMessage, ChatRequest
from bot.engine.providers.registry import (
    SYNC_JOB_FUNC,
    ModelRegistry,
    add_listener,
    remove_listener,
    schedule_sync,
    scheduled_sync,
)
from bot.engine.providers.router import Deployment, Router
from bot.engine.providers.usage import CreditRecorder, call_cost
from bot.events import Event
from tests.fakes.lmstudio import FakeLMStudio

MODELS_PATH = "/api/v1/models"


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sessions(migrated_db: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(migrated_db)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def lms() -> AsyncIterator[FakeLMStudio]:
    async with FakeLMStudio() as server:
        server.script("qwen-7b", params="7B", size_bytes=4_000_000_000)
        server.script("smol-135m", loaded=False)
        yield server


async def add_provider(sessions: async_sessionmaker[AsyncSession], name: str, url: str, **extra: object) -> None:
    async with sessions() as session, session.begin():
        session.add(AiProvider(name=name, kind=ProviderKind.LMSTUDIO, base_url=url, settings={}, **extra))


async def discoveries(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[str, str]]:
    async with sessions() as session:
        rows = (await session.scalars(select(ModelDiscovery).order_by(ModelDiscovery.id))).all()
        return [(row.model_key, str(row.event)) for row in rows]


async def test_sync_records_discovered_vanished_reappeared_and_loaded(
    sessions: async_sessionmaker[AsyncSession], lms: FakeLMStudio
) -> None:
    await add_provider(sessions, "local", lms.url)
    client = LMStudioProvider(name="local", base_url=lms.url)
    events: list[Event] = []
    registry = ModelRegistry(sessions=sessions, providers={"local": client}, on_event=events.append)
    try:
        [first] = await registry.sync()
        assert sorted(first.of(DiscoveryEvent.DISCOVERED)) == ["qwen-7b", "smol-135m"]
        async with sessions() as session:
            rows = {r.model_key: r for r in (await session.scalars(select(AiModel))).all()}
        assert rows["qwen-7b"].is_loaded
        assert rows["qwen-7b"].size_bytes == 4_000_000_000
        assert rows["qwen-7b"].capabilities["tool_use"] is True
        assert not rows["smol-135m"].is_loaded

        lms.remove("qwen-7b")
        lms.script("smol-135m", loaded=True)
        lms.script("gemma-270m")
        [second] = await registry.sync()
        assert second.of(DiscoveryEvent.VANISHED) == ["qwen-7b"]
        assert second.of(DiscoveryEvent.DISCOVERED) == ["gemma-270m"]
        assert second.of(DiscoveryEvent.LOADED) == ["smol-135m"]

        lms.script("qwen-7b", params="7B")
        [third] = await registry.sync()
        assert third.of(DiscoveryEvent.REAPPEARED) == ["qwen-7b"]
        [quiet] = await registry.sync()
        assert quiet.changes == ()
    finally:
        await client.aclose()

    async with sessions() as session:
        qwen = await session.scalar(select(AiModel).where(AiModel.model_key == "qwen-7b"))
        provider = await session.scalar(select(AiProvider).where(AiProvider.name == "local"))
    assert qwen is not None
    assert qwen.vanished_at is None
    assert provider is not None
    assert provider.health_status == HealthStatus.HEALTHY
    assert [(e.kind, e.payload["model"]) for e in events] == [
        (key, model) for model, key in await discoveries(sessions)
    ]
    assert ("qwen-7b", "vanished") in await discoveries(sessions)


async def test_unreachable_provider_vanishes_nothing(
    sessions: async_sessionmaker[AsyncSession], lms: FakeLMStudio
) -> None:
    await add_provider(sessions, "local", lms.url)
    client = LMStudioProvider(name="local", base_url=lms.url)
    registry = ModelRegistry(sessions=sessions, providers={"local": client})
    try:
        await registry.sync()
        await lms.close()
        [report] = await registry.sync()
    finally:
        await client.aclose()
    assert report.error
    async with sessions() as session:
        models = (await session.scalars(select(AiModel))).all()
        provider = await session.scalar(select(AiProvider).where(AiProvider.name == "local"))
    assert all(model.vanished_at is None for model in models)
    assert provider is not None
    assert provider.health_status == HealthStatus.DOWN


async def test_model_lists_are_cached_for_the_configured_ttl(sqlite_url: str, lms: FakeLMStudio) -> None:
    engine = create_engine(sqlite_url)  # listing never touches the database
    sessions = session_factory(engine)
    clock = ManualClock()
    client = LMStudioProvider(name="local", base_url=lms.url, models_cache_s=0)
    registry = ModelRegistry(sessions=sessions, providers={"local": client}, ttl_s=60, clock=clock)
    try:
        await registry.list_models("local")
        asked = len(lms.calls(MODELS_PATH))
        await registry.list_models("local")
        clock.now += 59
        await registry.list_models("local")
        assert len(lms.calls(MODELS_PATH)) == asked
        clock.now += 2
        await registry.list_models("local")
        assert len(lms.calls(MODELS_PATH)) > asked
    finally:
        await client.aclose()
        await engine.dispose()


async def test_scheduled_job_syncs_from_the_database(
    sessions: async_sessionmaker[AsyncSession], lms: FakeLMStudio, migrated_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    async with sessions() as session, session.begin():
        for row in (await session.scalars(select(AiProvider))).all():
            row.is_enabled = False  # the seeded LM Studio on :1234 is not running here
    await add_provider(sessions, "scheduled", lms.url)
    monkeypatch.setenv("ORCH_DATABASE_URL", migrated_db)
    received: list[Event] = []
    add_listener(received.append)
    try:
        reports = await scheduled_sync()
    finally:
        remove_listener(received.append)
    assert [r.provider for r in reports] == ["scheduled"]
    assert {e.payload["model"] for e in received} == {"qwen-7b", "smol-135m"}

    scheduler = AsyncIOScheduler()
    job = schedule_sync(scheduler, interval_s=120)
    assert job.id == "models.sync"
    assert f"{job.func.__module__}:{job.func.__name__}" == SYNC_JOB_FUNC
    with pytest.raises(ValueError, match="hammer"):
        schedule_sync(scheduler, interval_s=1)


async def test_router_calls_land_in_credit_usage_with_cost(
    sessions: async_sessionmaker[AsyncSession], lms: FakeLMStudio
) -> None:
    prices = {"prices": {"qwen-7b": {"prompt_per_mtok": "2", "completion_per_mtok": "10"}}, "currency": "EUR"}
    await add_provider(sessions, "paid", lms.url, is_local=False)
    async with sessions() as session, session.begin():
        row = await session.scalar(select(AiProvider).where(AiProvider.name == "paid"))
        assert row is not None
        row.settings = prices
    lms.script("qwen-7b", answer="one two three", prompt_tokens=1000)
    client = LMStudioProvider(name="paid", base_url=lms.url)
    registry = ModelRegistry(sessions=sessions, providers={"paid": client})
    router = Router(deployments=[Deployment(provider=client, model="qwen-7b")], on_call=CreditRecorder(sessions))
    try:
        await registry.sync()
        request = ChatRequest(model="qwen-7b", messages=[ChatMessage(role="user", content="count")])
        await router.chat(request)
        streamed = "".join([d.text async for d in router.stream_chat(request)])
    finally:
        await client.aclose()
    assert streamed == "one two three"
    async with sessions() as session:
        usage = (await session.scalars(select(CreditUsage).order_by(CreditUsage.id))).all()
        model_id = await session.scalar(select(AiModel.id).where(AiModel.model_key == "qwen-7b"))
    assert len(usage) == 2
    first = usage[0]
    assert (first.prompt_tokens, first.completion_tokens) == (1000, 3)
    assert first.model_id == model_id
    assert first.currency == "EUR"
    assert first.cost == Decimal("0.002030")
    async with sessions() as session:
        model = await session.get(AiModel, model_id)
    assert model is not None
    assert model.last_used_at is not None
    assert [d.id for d in registry.deployments()] == ["paid/qwen-7b", "paid/smol-135m"]


def test_cost_is_zero_without_a_price() -> None:
    assert call_cost({}, "m", prompt_tokens=10, completion_tokens=10) == 0
    assert call_cost({"prices": {"*": {"prompt_per_mtok": "bad"}}}, "m", prompt_tokens=1, completion_tokens=1) == 0
    assert call_cost({"prices": {"*": {"prompt_per_mtok": 1_000_000}}}, "m", prompt_tokens=3, completion_tokens=0) == 3
