"""VRAM-aware loading against a fake LM Studio: round trips, LRU idle unloading, refusal with numbers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.engine.providers.lmstudio import LMStudioProvider
from bot.engine.providers.port import LoadConfig, ModelDoesNotFitError
from bot.engine.providers.vram import MIB, ModelMemoryManager, estimate_for_model
from tests.fakes.lmstudio import FakeLMStudio

LOAD = "/api/v1/models/load"
UNLOAD = "/api/v1/models/unload"
SIZE = 100_000_000  # each small model: ~318 MiB with 4096 tokens of context (weights + KV + overhead)


@pytest.fixture
async def lms() -> AsyncIterator[FakeLMStudio]:
    async with FakeLMStudio() as server:
        server.script("old", size_bytes=SIZE, params="135M")
        server.script("recent", size_bytes=SIZE, params="135M")
        server.script("cold", size_bytes=SIZE, params="135M", loaded=False)
        server.script("huge", size_bytes=2 * 1024**5, params="400B", loaded=False)
        yield server


@pytest.fixture
async def client(lms: FakeLMStudio) -> AsyncIterator[LMStudioProvider]:
    provider = LMStudioProvider(name="lms", base_url=lms.url, models_cache_s=0)
    yield provider
    await provider.aclose()


async def small_model_bytes(client: LMStudioProvider) -> int:
    estimate = estimate_for_model(await client.model_info("cold"))
    assert estimate is not None
    return estimate.total_bytes


async def test_load_unload_round_trip(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    manager = ModelMemoryManager(providers={"lms": client}, reserve_bytes=0)
    instance, plan = await manager.load("lms", "cold", config=LoadConfig(context_length=8192))
    assert instance is not None
    assert plan.unload_first == ()
    assert plan.estimate is not None
    assert plan.estimate.context_length == 8192
    assert lms.calls(LOAD)[0].body["context_length"] == 8192
    assert ("lms", "cold") in manager.states
    assert (await client.model_info("cold")).loaded

    again, again_plan = await manager.load("lms", "cold")
    assert again is None
    assert again_plan.note == "already loaded"
    assert len(lms.calls(LOAD)) == 1

    await manager.unload("lms", "cold")
    assert not (await client.model_info("cold")).loaded
    assert ("lms", "cold") not in manager.states


async def test_least_recently_used_idle_model_makes_room(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    each = await small_model_bytes(client)
    clock_now = [0.0]
    manager = ModelMemoryManager(
        providers={"lms": client}, budget_bytes=int(2.5 * each), reserve_bytes=0, clock=lambda: clock_now[0]
    )
    await manager.refresh()
    clock_now[0] = 10.0
    manager.mark_used("lms", "old")
    clock_now[0] = 20.0
    manager.mark_used("lms", "recent")

    _, plan = await manager.load("lms", "cold")
    assert [victim.model for victim in plan.unload_first] == ["old"]
    assert [call.body["instance_id"] for call in lms.calls(UNLOAD)] == ["old"]
    assert lms.loaded_instance_ids("recent") == ["recent"]
    assert lms.loaded_instance_ids("cold")


async def test_busy_models_are_never_unloaded(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    each = await small_model_bytes(client)
    manager = ModelMemoryManager(providers={"lms": client}, budget_bytes=int(2.5 * each), reserve_bytes=0)
    await manager.refresh()
    manager.begin_use("lms", "old")  # older, but answering right now
    _, plan = await manager.load("lms", "cold")
    assert [victim.model for victim in plan.unload_first] == ["recent"]

    manager.begin_use("lms", "cold")
    with pytest.raises(ModelDoesNotFitError, match="busy models hold"):
        await manager.load("lms", "recent")


async def test_a_model_that_cannot_fit_is_refused_with_numbers(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    manager = ModelMemoryManager(providers={"lms": client})  # the real free RAM (or VRAM) of this machine
    with pytest.raises(ModelDoesNotFitError) as caught:
        await manager.load("lms", "huge")
    message = str(caught.value)
    assert "huge needs about" in message
    assert "weights 2048.00 TiB" not in message  # shown in GiB, with its parts
    assert "GiB" in message
    assert "KV cache" in message
    assert "is free" in message
    assert "fix:" in message
    assert lms.calls(LOAD) == []
    assert lms.calls(UNLOAD) == []  # nothing was unloaded for a load that could never succeed


async def test_load_refused_by_the_server_for_memory_maps_to_does_not_fit(
    lms: FakeLMStudio, client: LMStudioProvider
) -> None:
    lms.load_errors["cold"] = (500, "Failed to load model: insufficient system resources")
    manager = ModelMemoryManager(providers={"lms": client}, reserve_bytes=64 * MIB)
    with pytest.raises(ModelDoesNotFitError):
        await manager.load("lms", "cold")
