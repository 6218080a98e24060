"""The LM Studio client against a local LM Studio peer: REST v1, fallbacks to v0 and /v1, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.engine.providers.factory import build_provider
from bot.engine.providers.lmstudio import LMStudioProvider
from bot.engine.providers.port import (
    ChatMessage,
    ChatRequest,
    DownloadError,
    LoadConfig,
    ModelDoesNotFitError,
    ModelNotFoundError,
    ProviderError,
    ProviderHTTPError,
    ProviderRateLimitedError,
    StreamInterruptedError,
)
from tests.fakes import DownloadScript, FakeLMStudio


def _request(model: str, **kwargs: object) -> ChatRequest:
    return ChatRequest(model=model, messages=[ChatMessage(role="user", content="hello there")], **kwargs)  # type: ignore[arg-type]


def _client(fake: FakeLMStudio, token: str | None = None) -> LMStudioProvider:
    client = build_provider(kind="lmstudio", name="lms", base_url=fake.url, api_token=token)
    assert isinstance(client, LMStudioProvider)
    client.download_poll_s = 0.01
    return client


@pytest.fixture
async def lms() -> AsyncIterator[FakeLMStudio]:
    async with FakeLMStudio(api_token="lm-token") as fake:
        fake.script("qwen/qwen3-4b", answer="Hi from Qwen", context_length=32768, size_bytes=2_500_000_000)
        fake.script("google/gemma-3-1b", loaded=False, family="gemma3")
        fake.script("nomic-embed", model_type="embedding", embedding_dims=6)
        yield fake


@pytest.fixture
async def client(lms: FakeLMStudio) -> AsyncIterator[LMStudioProvider]:
    provider = _client(lms, "lm-token")
    yield provider
    await provider.aclose()


async def test_lists_models_from_rest_v1(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    models = {m.key: m for m in await client.list_models()}
    qwen = models["qwen/qwen3-4b"]
    assert qwen.loaded
    assert qwen.instance_ids == ("qwen/qwen3-4b",)
    assert qwen.context_length == 32768
    assert qwen.size_bytes == 2_500_000_000
    assert qwen.quantization == "Q4_K_M"
    assert qwen.parameters == "135M"
    assert qwen.family == "llama"
    assert "trained_for_tool_use" in qwen.capabilities
    assert not models["google/gemma-3-1b"].loaded
    assert models["nomic-embed"].model_type == "embedding"
    assert "embedding" in models["nomic-embed"].capabilities
    assert client.api_level == "v1"
    assert lms.calls("/api/v1/models")[0].headers["Authorization"] == "Bearer lm-token"
    await client.list_models()
    assert len(lms.calls("/api/v1/models")) == 1  # cached
    await client.list_models(refresh=True)
    assert len(lms.calls("/api/v1/models")) == 2


async def test_load_with_config_and_unload_by_instance_round_trip(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    loaded = await client.load(
        "google/gemma-3-1b",
        LoadConfig(context_length=8192, flash_attention=True, extra={"eval_batch_size": 256, "ignored": 1}),
    )
    assert loaded.instance_id == "google/gemma-3-1b"
    assert loaded.load_time_s == 0.25
    body = lms.calls("/api/v1/models/load")[0].body
    assert body == {
        "model": "google/gemma-3-1b",
        "context_length": 8192,
        "flash_attention": True,
        "eval_batch_size": 256,
    }
    second = await client.load("google/gemma-3-1b")
    assert second.instance_id == "google/gemma-3-1b:2"
    info = await client.model_info("google/gemma-3-1b")
    assert info.loaded
    assert info.instance_ids == ("google/gemma-3-1b", "google/gemma-3-1b:2")
    assert info.context_length == 8192
    await client.unload("google/gemma-3-1b", instance_id="google/gemma-3-1b:2")
    assert lms.loaded_instance_ids("google/gemma-3-1b") == ["google/gemma-3-1b"]
    await client.unload("google/gemma-3-1b")
    assert lms.loaded_instance_ids("google/gemma-3-1b") == []
    assert [c.body for c in lms.calls("/api/v1/models/unload")] == [
        {"instance_id": "google/gemma-3-1b:2"},
        {"instance_id": "google/gemma-3-1b"},
    ]
    assert not (await client.model_info("google/gemma-3-1b")).loaded


async def test_load_that_does_not_fit_and_unknown_model(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    lms.script("huge/model-70b", loaded=False)
    lms.load_errors["huge/model-70b"] = (500, "Failed to load model: insufficient system resources")
    with pytest.raises(ModelDoesNotFitError):
        await client.load("huge/model-70b")
    with pytest.raises(ModelNotFoundError):
        await client.load("nobody/nothing")
    with pytest.raises(ModelNotFoundError):
        await client.model_info("nobody/nothing")


async def test_chat_and_stream_use_openai_compatible_endpoint(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    result = await client.chat(_request("qwen/qwen3-4b"))
    assert result.text == "Hi from Qwen"
    assert result.usage.prompt_tokens == 2
    deltas = [d async for d in client.stream_chat(_request("qwen/qwen3-4b"))]
    assert "".join(d.text for d in deltas) == "Hi from Qwen"
    assert deltas[-1].done
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 3
    assert len(lms.calls("/v1/chat/completions")) == 2


async def test_stream_faults(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    lms.script("qwen/qwen3-4b", answer="one two three four five six seven", drop_after_tokens=5)
    with pytest.raises(StreamInterruptedError) as caught:
        [d async for d in client.stream_chat(_request("qwen/qwen3-4b"))]
    assert caught.value.partial_text == "one two three four five "
    lms.script("qwen/qwen3-4b", drop_after_tokens=None, fail_status=429, fail_times=1, retry_after="3")
    with pytest.raises(ProviderRateLimitedError) as limited:
        await client.chat(_request("qwen/qwen3-4b"))
    assert limited.value.retry_after == 3.0


async def test_download_job_progress_until_completed(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    lms.downloadable["qwen/qwen3-8b"] = DownloadScript(total_bytes=4000, steps=4)
    events = [p async for p in client.download("qwen/qwen3-8b", quantization="Q4_K_M")]
    assert lms.calls("/api/v1/models/download")[0].body == {"model": "qwen/qwen3-8b", "quantization": "Q4_K_M"}
    assert [p.status for p in events] == ["downloading"] * 4 + ["completed"]
    assert [p.fraction for p in events] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert events[-1].done
    assert events[0].job_id
    assert events[0].bytes_per_s == 1000.0
    assert "qwen/qwen3-8b" in {m.key for m in await client.list_models()}
    again = [p async for p in client.download("qwen/qwen3-8b")]
    assert [(p.status, p.done) for p in again] == [("already_downloaded", True)]


async def test_download_failure_and_unknown(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    lms.downloadable["broken/model"] = DownloadScript(total_bytes=1000, steps=5, fail_at_step=2)
    seen: list[str] = []

    async def consume() -> None:
        async for progress in client.download("broken/model"):
            seen.append(progress.status)

    with pytest.raises(DownloadError):
        await consume()
    assert seen == ["downloading", "downloading"]
    with pytest.raises(ModelNotFoundError):
        [p async for p in client.download("nobody/nothing")]


async def test_bearer_token_required(lms: FakeLMStudio) -> None:
    anonymous = _client(lms)
    try:
        with pytest.raises(ProviderHTTPError) as caught:
            await anonymous.list_models()
        assert caught.value.status == 401
        assert caught.value.hint
        assert not (await anonymous.health()).ok
    finally:
        await anonymous.aclose()


async def test_falls_back_to_v0_when_v1_is_missing() -> None:
    async with FakeLMStudio(native_v1=False) as fake:
        fake.script("llama-3.2-1b", context_length=131072)
        fake.script("phi-4", loaded=False)
        client = _client(fake)
        try:
            models = {m.key: m for m in await client.list_models()}
            assert client.api_level == "v0"
            assert models["llama-3.2-1b"].loaded
            assert not models["phi-4"].loaded
            assert models["llama-3.2-1b"].context_length == 131072
            assert (await client.health()).ok
            loaded = await client.load("phi-4")  # just-in-time loading through a one-token chat
            assert loaded.instance_id == "phi-4"
            assert fake.calls("/v1/chat/completions")[-1].body["max_tokens"] == 1
            assert fake.loaded_instance_ids("phi-4") == ["phi-4"]
            with pytest.raises(ProviderError, match="no REST API to unload"):
                await client.unload("phi-4")
            with pytest.raises(DownloadError):
                [p async for p in client.download("x")]
        finally:
            await client.aclose()


async def test_falls_back_to_openai_models_when_no_native_api() -> None:
    async with FakeLMStudio(native_v1=False, native_v0=False, jit=False) as fake:
        fake.script("loaded-one")
        fake.script("cold-one", loaded=False)
        client = _client(fake)
        try:
            assert [m.key for m in await client.list_models()] == ["loaded-one"]
            assert client.api_level == "openai"
            with pytest.raises(ModelNotFoundError):
                await client.chat(_request("cold-one"))
        finally:
            await client.aclose()


async def test_embeddings(lms: FakeLMStudio, client: LMStudioProvider) -> None:
    vectors = await client.embed("nomic-embed", ["x", "y"])
    assert [len(v) for v in vectors] == [6, 6]
