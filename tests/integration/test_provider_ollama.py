"""The Ollama client against a local Ollama peer: NDJSON streaming, keep-alive, pull progress."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.engine.providers.factory import build_provider
from bot.engine.providers.ollama import OllamaProvider
from bot.engine.providers.port import (
    ChatMessage,
    ChatRequest,
    ChecksumMismatchError,
    DownloadError,
    LoadConfig,
    ModelNotFoundError,
    ProviderHTTPError,
    ProviderTimeoutError,
    StreamInterruptedError,
)
from tests.fakes import FakeOllama, PullScript


def _request(model: str = "llama3.2", **kwargs: object) -> ChatRequest:
    return ChatRequest(model=model, messages=[ChatMessage(role="user", content="why is the sky blue")], **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def ollama() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as fake:
        fake.script("llama3.2", answer="Rayleigh scattering.", vram_bytes=2_000_000_000, context_length=8192)
        fake.script("qwen3:4b", loaded=False, family="qwen3", params="4B")
        yield fake


@pytest.fixture
async def client(ollama: FakeOllama) -> AsyncIterator[OllamaProvider]:
    provider = build_provider(kind="ollama", name="ollama", base_url=ollama.url)
    assert isinstance(provider, OllamaProvider)
    yield provider
    await provider.aclose()


async def test_models_merge_tags_and_ps(ollama: FakeOllama, client: OllamaProvider) -> None:
    models = {m.key: m for m in await client.list_models()}
    assert models["llama3.2"].loaded
    assert models["llama3.2"].vram_bytes == 2_000_000_000
    assert models["llama3.2"].context_length == 8192
    assert not models["qwen3:4b"].loaded
    assert models["qwen3:4b"].parameters == "4B"
    assert models["qwen3:4b"].family == "qwen3"
    assert models["qwen3:4b"].quantization == "Q4_K_M"
    info = await client.model_info("qwen3:4b")
    assert info.context_length == 4096
    assert "completion" in info.capabilities
    with pytest.raises(ModelNotFoundError):
        await client.model_info("nope")
    health = await client.health()
    assert health.ok
    assert health.version == ollama.version


async def test_chat_whole_and_streamed(ollama: FakeOllama, client: OllamaProvider) -> None:
    result = await client.chat(_request(temperature=0.1, max_tokens=64, stop=["\n"]))
    assert result.text == "Rayleigh scattering."
    assert result.usage.completion_tokens == 2
    assert result.usage.prompt_tokens == 5
    assert result.tokens_per_s == pytest.approx(50.0)
    sent = ollama.calls("/api/chat")[0].body
    assert sent["options"] == {"temperature": 0.1, "num_predict": 64, "stop": ["\n"]}
    assert sent["stream"] is False
    ollama.script("llama3.2", split_bytes=4, token_delay_s=0.01)
    deltas = [d async for d in client.stream_chat(_request())]
    assert "".join(d.text for d in deltas) == "Rayleigh scattering."
    final = deltas[-1]
    assert final.done
    assert final.finish_reason == "stop"
    assert final.tokens_per_s == pytest.approx(50.0)
    assert final.time_to_first_token_ms is not None
    assert final.elapsed_ms is not None


async def test_structured_output_uses_format(ollama: FakeOllama, client: OllamaProvider) -> None:
    ollama.script("llama3.2", json_answer={"age": 22})
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    assert (await client.chat(_request(json_schema=schema))).text == '{"age": 22}'
    assert ollama.calls("/api/chat")[0].body["format"] == schema


async def test_error_line_and_cut_mid_stream(ollama: FakeOllama, client: OllamaProvider) -> None:
    ollama.script("llama3.2", answer="a b c d e f", error_after_tokens=2, error_message="runner died")
    with pytest.raises(StreamInterruptedError, match="runner died") as caught:
        [d async for d in client.stream_chat(_request())]
    assert caught.value.partial_text == "a b "
    ollama.script("llama3.2", error_after_tokens=None, drop_after_tokens=5)
    with pytest.raises(StreamInterruptedError) as cut:
        [d async for d in client.stream_chat(_request())]
    assert cut.value.partial_text == "a b c d e "


async def test_slow_first_token(ollama: FakeOllama, client: OllamaProvider) -> None:
    ollama.script("llama3.2", first_token_delay_s=1.0)
    with pytest.raises(ProviderTimeoutError):
        [d async for d in client.stream_chat(_request(first_token_timeout_s=0.2))]


async def test_http_errors(ollama: FakeOllama, client: OllamaProvider) -> None:
    with pytest.raises(ModelNotFoundError):
        await client.chat(_request("missing"))
    ollama.script("llama3.2", fail_status=503, fail_times=1)
    with pytest.raises(ProviderHTTPError) as caught:
        [d async for d in client.stream_chat(_request())]
    assert caught.value.status == 503
    assert caught.value.retryable


async def test_load_and_unload_round_trip(ollama: FakeOllama, client: OllamaProvider) -> None:
    loaded = await client.load("qwen3:4b", LoadConfig(context_length=16384, keep_alive_s=600))
    assert loaded.instance_id == "qwen3:4b"
    assert ollama.calls("/api/chat")[0].body == {
        "model": "qwen3:4b",
        "messages": [],
        "stream": False,
        "keep_alive": 600,
        "options": {"num_ctx": 16384},
    }
    assert (await client.model_info("qwen3:4b")).loaded
    await client.unload("qwen3:4b")
    assert ollama.calls("/api/chat")[1].body["keep_alive"] == 0
    assert not {m.key: m for m in await client.list_models(refresh=True)}["qwen3:4b"].loaded


async def test_pull_progress_and_failures(ollama: FakeOllama, client: OllamaProvider) -> None:
    ollama.pullable["tinyllama:q4"] = PullScript(total_bytes=3000, steps=3)
    events = [p async for p in client.download("tinyllama", quantization="q4")]
    assert ollama.calls("/api/pull")[0].body == {"model": "tinyllama:q4", "stream": True}
    assert events[0].status == "pulling manifest"
    assert [p.downloaded_bytes for p in events if p.total_bytes] == [1000, 2000, 3000]
    assert events[-1].status == "success"
    assert events[-1].done
    assert "tinyllama:q4" in {m.key for m in await client.list_models(refresh=True)}
    ollama.pullable["evil"] = PullScript(error="digest mismatch, file must be downloaded again")
    with pytest.raises(ChecksumMismatchError):
        [p async for p in client.download("evil")]
    with pytest.raises(DownloadError, match="does not exist"):
        [p async for p in client.download("nothing-here")]


async def test_embeddings(ollama: FakeOllama, client: OllamaProvider) -> None:
    vectors = await client.embed("llama3.2", ["a", "b"])
    assert len(vectors) == 2
    assert len(vectors[0]) == 8


async def test_unreachable_health_never_raises() -> None:
    async with FakeOllama() as fake:
        url = fake.url
    client = build_provider(kind="ollama", name="gone", base_url=url)
    try:
        health = await client.health()
        assert not health.ok
        assert health.latency_ms is None
    finally:
        await client.aclose()
