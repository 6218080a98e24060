"""Pytest fixtures for the LLM-server fakes.

Use them from any test module with `pytest_plugins = ["tests.fakes.fixtures"]` in the root
conftest, or import them directly: `from tests.fakes.fixtures import fake_lmstudio  # noqa: F401`.
Every fixture yields a started server with no models; script what the test needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.lmstudio import FakeLMStudio
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai_compat import FakeOpenAICompat


@pytest.fixture
async def fake_lmstudio() -> AsyncIterator[FakeLMStudio]:
    """LM Studio with v1, v0 and /v1 OpenAI-compatible endpoints, no token."""
    async with FakeLMStudio() as server:
        yield server


@pytest.fixture
async def fake_ollama() -> AsyncIterator[FakeOllama]:
    """Ollama with NDJSON streaming."""
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def fake_openai_compat() -> AsyncIterator[FakeOpenAICompat]:
    """A single-model llama.cpp-like OpenAI-compatible server."""
    async with FakeOpenAICompat() as server:
        yield server


@pytest.fixture
async def fake_llamacpp_router() -> AsyncIterator[FakeOpenAICompat]:
    """llama.cpp in router mode (/models, /models/load, /models/unload)."""
    async with FakeOpenAICompat(router_mode=True) as server:
        yield server
