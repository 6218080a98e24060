"""What every LLM-server fake shares: scripted models, request recording, a loopback server.

A fake is a real aiohttp server on 127.0.0.1 with port 0. Tests script how each model behaves
with `ModelScript` and assert on what crossed the socket with `calls(path)`.
"""

from __future__ import annotations

import abc
import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._loopback import LoopbackServer

_TOKEN_RE = re.compile(r"\S+\s*|\s+")
JSON_BODY: web.RequestKey[Any] = web.RequestKey("json_body", object)


@dataclass
class ModelScript:
    """How one fake model answers. Every field has a harmless default.

    Answer content:
      answer            the whole text (default "ok")
      json_answer       if set, the answer is `json.dumps(json_answer)` (structured output)
      tokens            explicit token split; default splits `answer` into words keeping spaces
    Timing:
      first_token_delay_s  wait before the first token (slow first token / TTFT tests)
      token_delay_s        wait between tokens
      structured_delay_s   extra wait before answering a request that asks for structured output
                           (a verdict or a plan slower than a free-text answer of the same model)
    Stream faults:
      drop_after_tokens    cut the TCP connection after N tokens (no terminator)
      error_after_tokens   send the server's error event after N tokens, then end the stream
      error_message        text of that error event
      keepalive_comments   interleave ": keep-alive" SSE comments (OpenAI-style peers)
      split_bytes          write every stream frame in pieces of this many bytes
    HTTP faults (for any request that names this model):
      fail_status       the status to answer with while `fail_times` > 0 (e.g. 500, 503, 429)
      fail_times        how many of the next requests fail; -1 = forever
      retry_after       value of the Retry-After header sent with the failure (seconds or a date)
    Catalogue facts:
      loaded, size_bytes, context_length, family, quantization, params, model_type, vram_bytes,
      embedding_dims
    Usage:
      prompt_tokens     reported prompt token count (default: word count of the prompt)
    Per-request answers (a model playing several roles, e.g. planner, executor and validator):
      structured        {schema title: JSON value}: a request whose structured-output schema
                        (`response_format.json_schema.schema.title`, Ollama `format.title`) has that
                        title gets that value as JSON; other requests get `answer`
      responder         a function of the request body returning the answer text (wins over all)
    """

    answer: str = "ok"
    json_answer: Any = None
    tokens: list[str] | None = None
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    structured_delay_s: float = 0.0
    drop_after_tokens: int | None = None
    error_after_tokens: int | None = None
    error_message: str = "model crashed while generating"
    keepalive_comments: bool = False
    split_bytes: int | None = None
    fail_status: int = 500
    fail_times: int = 0
    retry_after: str | None = None
    loaded: bool = True
    size_bytes: int = 100_000_000
    context_length: int = 4096
    family: str = "llama"
    quantization: str = "Q4_K_M"
    params: str = "135M"
    model_type: str = "llm"
    vram_bytes: int = 0
    embedding_dims: int = 8
    prompt_tokens: int | None = None
    structured: dict[str, Any] = field(default_factory=dict)
    responder: Callable[[dict[str, Any]], str] | None = None

    def text_for(self, body: Any) -> str:
        """The answer to one request body (see `structured` and `responder`)."""
        if self.responder is not None and isinstance(body, dict):
            return self.responder(body)
        title = schema_title(body)
        if title is not None and title in self.structured:
            return json.dumps(self.structured[title])
        return self.text()

    def tokens_for(self, body: Any) -> list[str]:
        """The tokens streamed for one request body."""
        if self.responder is None and schema_title(body) not in self.structured:
            return self.token_list()
        return _TOKEN_RE.findall(self.text_for(body)) or [""]

    def text(self) -> str:
        """The full answer text."""
        if self.json_answer is not None:
            return json.dumps(self.json_answer)
        if self.tokens is not None:
            return "".join(self.tokens)
        return self.answer

    def token_list(self) -> list[str]:
        """The answer as the tokens the fake streams."""
        if self.tokens is not None and self.json_answer is None:
            return list(self.tokens)
        return _TOKEN_RE.findall(self.text()) or [""]


def schema_title(body: Any) -> str | None:
    """The title of the structured-output schema a request asks for, if any."""
    if not isinstance(body, dict):
        return None
    schema: Any = body.get("format")
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        schema = (response_format.get("json_schema") or {}).get("schema")
    return schema.get("title") if isinstance(schema, dict) else None


@dataclass(frozen=True)
class RecordedCall:
    """One request as it arrived at the fake."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


def count_words(messages: Any) -> int:
    """A deterministic stand-in for a tokenizer: words in all message contents."""
    total = 0
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += len(str(message.get("content", "")).split())
    elif isinstance(messages, str):
        total = len(messages.split())
    return total


def embedding_for(text: str, dims: int) -> list[float]:
    """A deterministic vector for a text (same text, same vector)."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(text)) or 1
    return [((seed * (k + 7)) % 1000) / 1000.0 for k in range(dims)]


class FakeLLMServer(LoopbackServer):
    """Base of the fakes: scripted models, recorded calls, start/stop on 127.0.0.1:0.

    Use as `async with FakeX() as fake:` or call `await fake.start()` / `await fake.close()`.
    """

    def __init__(self, *, api_token: str | None = None) -> None:
        super().__init__()
        self.models: dict[str, ModelScript] = {}
        self.api_token = api_token
        self.recorded: list[RecordedCall] = []
        self.open_streams = 0

    # -- scripting -------------------------------------------------------------------------
    def script(self, model: str, **behaviour: Any) -> ModelScript:
        """Add or change a model: `fake.script("a", answer="X", first_token_delay_s=0.5)`."""
        current = self.models.get(model)
        if current is None:
            current = ModelScript(**behaviour)
            self.models[model] = current
        else:
            for key, value in behaviour.items():
                if not hasattr(current, key):
                    raise AttributeError(f"ModelScript has no field {key!r}")
                setattr(current, key, value)
        return current

    def remove(self, model: str) -> None:
        """Forget a model (the server then answers 404 for it)."""
        self.models.pop(model, None)

    # -- recording -------------------------------------------------------------------------
    def calls(self, path: str | None = None) -> list[RecordedCall]:
        """Requests that arrived, optionally only those for one path (exact match)."""
        if path is None:
            return list(self.recorded)
        return [call for call in self.recorded if call.path == path]

    def clear_calls(self) -> None:
        """Forget recorded requests (between phases of a test)."""
        self.recorded.clear()

    # -- lifecycle (start, close, url, port: tests/fakes/_loopback.py) -----------------------
    @abc.abstractmethod
    def build_app(self) -> web.Application:
        """The server's routes, on an app made by `_new_app` (so requests are recorded)."""

    def _new_app(self) -> web.Application:
        return web.Application(middlewares=[self._record_middleware], client_max_size=8 * 1024 * 1024)

    @web.middleware
    async def _record_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self.recorded.append(
            RecordedCall(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k: v for k, v in request.headers.items()},
                body=body,
            )
        )
        if self.api_token is not None and request.headers.get("Authorization") != f"Bearer {self.api_token}":
            return self.auth_error()
        request[JSON_BODY] = body
        return await handler(request)

    def auth_error(self) -> web.Response:
        """How this server says the token is wrong."""
        return web.json_response({"error": {"message": "Invalid API token", "type": "invalid_api_key"}}, status=401)

    # -- helpers for subclasses ------------------------------------------------------------
    def take_failure(self, script: ModelScript) -> bool:
        """Whether this request should fail per the script (consumes one failure)."""
        if script.fail_times == 0:
            return False
        if script.fail_times > 0:
            script.fail_times -= 1
        return True

    def failure_headers(self, script: ModelScript) -> dict[str, str]:
        """Retry-After when scripted."""
        return {"Retry-After": script.retry_after} if script.retry_after is not None else {}

    @staticmethod
    async def write_frame(resp: web.StreamResponse, frame: bytes, split: int | None) -> None:
        """Write one frame, optionally in small pieces so lines straddle network reads."""
        if not split:
            await resp.write(frame)
            return
        for start in range(0, len(frame), split):
            await resp.write(frame[start : start + split])
            await asyncio.sleep(0.001)

    @staticmethod
    def cut_connection(request: web.Request) -> None:
        """Drop the TCP connection without finishing the response."""
        transport = request.transport
        if transport is not None:
            transport.abort()
