"""The OpenAI-compatible client against a local llama.cpp-like peer: SSE edge cases and errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from bot.engine.providers._http import HttpTimeouts
from bot.engine.providers.factory import build_provider
from bot.engine.providers.openai_compat import OpenAICompatProvider
from bot.engine.providers.port import (
    ChatDelta,
    ChatMessage,
    ChatRequest,
    DownloadError,
    LLMProvider,
    ModelNotFoundError,
    ProviderError,
    ProviderHTTPError,
    ProviderRateLimitedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    StreamInterruptedError,
)
from tests.fakes import FakeOpenAICompat


def _request(model: str = "smol", **kwargs: object) -> ChatRequest:
    return ChatRequest(model=model, messages=[ChatMessage(role="user", content="say it")], **kwargs)  # type: ignore[arg-type]


async def _collect(provider: LLMProvider, request: ChatRequest) -> list[ChatDelta]:
    return [delta async for delta in provider.stream_chat(request)]


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAICompat]:
    async with FakeOpenAICompat() as fake:
        yield fake


@pytest.fixture
async def provider(server: FakeOpenAICompat) -> AsyncIterator[OpenAICompatProvider]:
    client = build_provider(kind="openai_compatible", name="llama", base_url=server.url)
    assert isinstance(client, OpenAICompatProvider)
    yield client
    await client.aclose()


async def test_whole_answer_with_usage_and_rate(server: FakeOpenAICompat, provider: OpenAICompatProvider) -> None:
    server.script("smol", answer="The sky is blue.")
    result = await provider.chat(_request(temperature=0.2, max_tokens=50, stop=["\n"]))
    assert result.text == "The sky is blue."
    assert result.usage.completion_tokens == 4
    assert result.usage.prompt_tokens == 2
    assert result.finish_reason == "stop"
    assert result.provider == "llama"
    assert result.latency_ms > 0
    sent = server.calls("/v1/chat/completions")[0].body
    assert sent["temperature"] == 0.2
    assert sent["max_tokens"] == 50
    assert sent["stop"] == ["\n"]
    assert sent["stream"] is False


async def test_stream_split_chunks_and_keepalives(server: FakeOpenAICompat, provider: OpenAICompatProvider) -> None:
    server.script("smol", answer="one two three four five", split_bytes=5, keepalive_comments=True, token_delay_s=0.01)
    deltas = await _collect(provider, _request())
    assert "".join(d.text for d in deltas) == "one two three four five"
    final = deltas[-1]
    assert final.done
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.completion_tokens == 5
    assert final.time_to_first_token_ms is not None
    assert final.time_to_first_token_ms > 0
    assert final.tokens_per_s is not None
    assert final.tokens_per_s > 0
    assert final.elapsed_ms is not None
    assert final.elapsed_ms >= final.time_to_first_token_ms
    assert deltas[0].time_to_first_token_ms is not None
    assert server.calls("/v1/chat/completions")[0].body["stream_options"] == {"include_usage": True}


async def test_structured_output_sends_json_schema(server: FakeOpenAICompat, provider: OpenAICompatProvider) -> None:
    server.script("smol", json_answer={"verdict": "pass", "score": 0.9})
    schema = {"type": "object", "properties": {"verdict": {"type": "string"}}, "required": ["verdict"]}
    result = await provider.chat(_request(json_schema=schema))
    assert json.loads(result.text) == {"verdict": "pass", "score": 0.9}
    fmt = server.calls("/v1/chat/completions")[0].body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"] == schema


async def test_continue_from_sends_assistant_prefix(server: FakeOpenAICompat, provider: OpenAICompatProvider) -> None:
    server.script("smol", answer="alpha beta gamma")
    deltas = await _collect(provider, _request(continue_from="alpha "))
    assert "".join(d.text for d in deltas) == "beta gamma"
    messages = server.calls("/v1/chat/completions")[0].body["messages"]
    assert messages[-1] == {"role": "assistant", "content": "alpha "}


async def test_error_event_mid_stream_keeps_partial_text(
    server: FakeOpenAICompat, provider: OpenAICompatProvider
) -> None:
    server.script("smol", answer="a b c d e f", error_after_tokens=3, error_message="slot crashed")
    with pytest.raises(StreamInterruptedError) as caught:
        await _collect(provider, _request())
    assert caught.value.partial_text == "a b c "
    assert "slot crashed" in str(caught.value)
    assert caught.value.retryable


async def test_connection_cut_mid_stream_keeps_partial_text(
    server: FakeOpenAICompat, provider: OpenAICompatProvider
) -> None:
    server.script("smol", answer="a b c d e f g h", drop_after_tokens=5)
    received: list[str] = []

    async def consume() -> None:
        async for delta in provider.stream_chat(_request()):
            received.append(delta.text)

    with pytest.raises(StreamInterruptedError) as caught:
        await consume()
    assert caught.value.partial_text == "a b c d e "
    assert "".join(received) == caught.value.partial_text


async def test_stream_ending_without_done_is_interrupted(
    server: FakeOpenAICompat, provider: OpenAICompatProvider
) -> None:
    server.script("smol", answer="a b c", drop_after_tokens=3)
    with pytest.raises(StreamInterruptedError) as caught:
        await _collect(provider, _request())
    assert caught.value.partial_text == "a b c"


async def test_slow_first_token_hits_first_token_deadline(
    server: FakeOpenAICompat, provider: OpenAICompatProvider
) -> None:
    server.script("smol", answer="late", first_token_delay_s=1.0)
    with pytest.raises(ProviderTimeoutError, match="first token"):
        await _collect(provider, _request(first_token_timeout_s=0.2))


async def test_slow_first_token_within_deadline_is_fine(
    server: FakeOpenAICompat, provider: OpenAICompatProvider
) -> None:
    server.script("smol", answer="late but fine", first_token_delay_s=0.2)
    deltas = await _collect(provider, _request(first_token_timeout_s=5))
    assert deltas[-1].time_to_first_token_ms is not None
    assert deltas[-1].time_to_first_token_ms >= 190


async def test_total_deadline_mid_stream_keeps_text(server: FakeOpenAICompat, provider: OpenAICompatProvider) -> None:
    # The headers and the first token come at once, the rest 0.4 s apart: a deadline of 1.5 s falls
    # mid-answer with room for a loaded machine (0.5 s once passed before the headers came).
    server.script("smol", answer="a b c d e f g h i j", token_delay_s=0.4)
    with pytest.raises(StreamInterruptedError) as caught:
        await _collect(provider, _request(timeout_s=1.5))
    assert caught.value.partial_text.startswith("a ")


async def test_429_carries_retry_after(server: FakeOpenAICompat, provider: OpenAICompatProvider) -> None:
    server.script("smol", fail_status=429, fail_times=1, retry_after="7")
    with pytest.raises(ProviderRateLimitedError) as caught:
        await provider.chat(_request())
    assert caught.value.retry_after == 7.0
    assert caught.value.status == 429
    assert caught.value.retryable
    server.script("smol", fail_times=1)
    with pytest.raises(ProviderRateLimitedError):
        await _collect(provider, _request())
    assert (await provider.chat(_request())).text == "ok"


async def test_500_burst_then_recovery_without_client_retries(
    server: FakeOpenAICompat, provider: OpenAICompatProvider
) -> None:
    server.script("smol", fail_status=500, fail_times=3)
    for _ in range(3):
        with pytest.raises(ProviderHTTPError) as caught:
            await provider.chat(_request())
        assert caught.value.status == 500
        assert caught.value.retryable
    assert len(server.calls("/v1/chat/completions")) == 3  # no hidden retries in the client
    assert (await provider.chat(_request())).text == "ok"


async def test_unknown_model_in_router_mode_is_model_not_found() -> None:
    async with FakeOpenAICompat(router_mode=True) as fake:
        fake.script("a")
        client = build_provider(kind="openai_compatible", name="r", base_url=fake.url + "/v1")
        try:
            with pytest.raises(ModelNotFoundError):
                await client.chat(_request("nope"))
            with pytest.raises(ModelNotFoundError):
                await client.model_info("nope")
        finally:
            await client.aclose()


async def test_connection_refused_is_unavailable() -> None:
    async with FakeOpenAICompat() as fake:
        url = fake.url
    client = build_provider(kind="openai_compatible", name="gone", base_url=url)
    try:
        with pytest.raises(ProviderUnavailableError):
            await client.chat(_request())
        with pytest.raises(ProviderUnavailableError):
            await _collect(client, _request())
        health = await client.health()
        assert not health.ok
        assert health.detail
    finally:
        await client.aclose()


async def test_bearer_token_sent_and_bad_token_rejected() -> None:
    async with FakeOpenAICompat(api_token="sk-right") as fake:
        fake.script("gpt")
        good = build_provider(kind="openai_compatible", name="paid", base_url=fake.url + "/v1", api_token="sk-right")
        bad = build_provider(kind="openai_compatible", name="paid", base_url=fake.url, api_token="sk-wrong")
        try:
            assert (await good.chat(_request("gpt"))).text == "ok"
            assert fake.calls("/v1/chat/completions")[0].headers["Authorization"] == "Bearer sk-right"
            with pytest.raises(ProviderHTTPError) as caught:
                await bad.chat(_request("gpt"))
            assert caught.value.status == 401
            assert not caught.value.retryable
            assert "sk-wrong" not in str(caught.value)
            assert not good.is_local or fake.url.startswith("http://127.0.0.1")
        finally:
            await good.aclose()
            await bad.aclose()


async def test_models_health_and_single_model_cannot_load(
    server: FakeOpenAICompat, provider: OpenAICompatProvider
) -> None:
    server.script("smol", context_length=8192, size_bytes=1234)
    models = await provider.list_models()
    assert [(m.key, m.loaded, m.context_length, m.size_bytes) for m in models] == [("smol", True, 8192, 1234)]
    assert (await provider.health()).ok
    assert provider.is_local
    with pytest.raises(ProviderError, match="cannot load"):
        await provider.load("smol")
    with pytest.raises(DownloadError):
        async for _ in provider.download("smol"):
            pass


async def test_router_mode_load_unload_round_trip() -> None:
    async with FakeOpenAICompat(router_mode=True) as fake:
        fake.script("a", loaded=False)
        fake.script("b")
        client = build_provider(kind="openai_compatible", name="router", base_url=fake.url)
        try:
            states = {m.key: m.loaded for m in await client.list_models()}
            assert states == {"a": False, "b": True}
            instance = await client.load("a")
            assert instance.instance_id == "a"
            assert fake.calls("/models/load")[0].body == {"model": "a"}
            assert {m.key: m.loaded for m in await client.list_models()} == {"a": True, "b": True}
            await client.unload("b")
            assert fake.calls("/models/unload")[0].body == {"model": "b"}
            assert {m.key: m.loaded for m in await client.list_models()} == {"a": True, "b": False}
            with pytest.raises(ProviderHTTPError):
                await client.unload("b")  # not loaded any more: the server says so
        finally:
            await client.aclose()


async def test_embeddings(server: FakeOpenAICompat, provider: OpenAICompatProvider) -> None:
    server.script("smol", embedding_dims=4)
    vectors = await provider.embed("smol", ["a", "b", "a"])
    assert len(vectors) == 3
    assert len(vectors[0]) == 4
    assert vectors[0] == vectors[2]


async def test_concurrent_streams_share_one_session(server: FakeOpenAICompat, provider: OpenAICompatProvider) -> None:
    server.script("smol", answer="x y z", token_delay_s=0.01)
    results = await asyncio.gather(*[_collect(provider, _request()) for _ in range(8)])
    assert all("".join(d.text for d in deltas) == "x y z" for deltas in results)
    assert server.open_streams == 0


async def test_timeouts_config_respected() -> None:
    async with FakeOpenAICompat() as fake:
        fake.script("smol", first_token_delay_s=1.0)
        client = build_provider(
            kind="openai_compatible",
            name="t",
            base_url=fake.url,
            timeouts=HttpTimeouts(first_token_s=0.2, total_s=0.3),
        )
        try:
            with pytest.raises(ProviderTimeoutError):
                await _collect(client, _request())
            with pytest.raises(ProviderTimeoutError):
                await client.chat(_request())
        finally:
            await client.aclose()
