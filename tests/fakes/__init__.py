"""Local peers that speak real LLM-server protocols, for every test that needs a model server.

    from tests.fakes import FakeLMStudio, FakeOllama, FakeOpenAICompat, ModelScript

Each is an aiohttp server on 127.0.0.1, port 0, usable as `async with Fake…() as fake:`; script
models with `fake.script(name, answer=..., json_answer=..., drop_after_tokens=..., ...)` (every
knob is documented on `ModelScript`) and read what arrived with `fake.calls(path)`.
Pytest fixtures: `tests.fakes.fixtures` (`fake_lmstudio`, `fake_ollama`, `fake_openai_compat`,
`fake_llamacpp_router`).
"""

from tests.fakes._base import FakeLLMServer, ModelScript, RecordedCall
from tests.fakes.lmstudio import DownloadScript, FakeLMStudio
from tests.fakes.ollama import FakeOllama, PullScript
from tests.fakes.openai_compat import FakeOpenAICompat

__all__ = [
    "DownloadScript",
    "FakeLLMServer",
    "FakeLMStudio",
    "FakeOllama",
    "FakeOpenAICompat",
    "ModelScript",
    "PullScript",
    "RecordedCall",
]
