"""Any server speaking OpenAI's chat API: llama.cpp (incl. router mode), vLLM, OpenAI, paid APIs.

Chat goes to `{api}/chat/completions` (SSE when streaming, parsed by `sse.iter_sse`); models
come from `{api}/models`. llama.cpp's router mode is recognised by the per-model `status`
object in that list, and then `POST {root}/models/load|unload {"model": id}` manage memory.

`base_url` may be the server root (`http://127.0.0.1:8080`) or the API root
(`https://api.openai.com/v1`); both work. Text from `continue_from` is sent as a trailing
assistant message (llama.cpp, LM Studio and vLLM continue it); answers carry only new text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict, cast

import aiohttp

from bot.engine.providers._http import (
    HttpClient,
    HttpTimeouts,
    deadline_error,
    is_local_url,
    stream_broken,
)
from bot.engine.providers.port import (
    ChatDelta,
    ChatMessage,
    ChatRequest,
    ChatResult,
    DownloadError,
    DownloadProgress,
    HealthStatus,
    LoadConfig,
    LoadedInstance,
    ModelInfo,
    ModelNotFoundError,
    ProviderError,
    ProviderKind,
    ProviderProtocolError,
    StreamInterruptedError,
    Usage,
)
from bot.engine.providers.sse import SSEParser

# -- wire types (OpenAI chat completions, llama.cpp extensions) ------------------------------


class WireMessage(TypedDict):
    role: str
    content: str


class WireJsonSchema(TypedDict):
    name: str
    schema: Mapping[str, Any]
    strict: bool


class WireResponseFormat(TypedDict):
    type: Literal["json_schema"]
    json_schema: WireJsonSchema


class WireJsonObjectFormat(TypedDict):
    """llama-cpp-python's server: a JSON object constrained by `schema` (enforced by a grammar)."""

    type: Literal["json_object"]
    schema: Mapping[str, Any]


class WireStreamOptions(TypedDict):
    include_usage: bool


class ChatCompletionRequest(TypedDict):
    model: str
    messages: list[WireMessage]
    stream: bool
    temperature: NotRequired[float]
    max_tokens: NotRequired[int]
    stop: NotRequired[list[str]]
    response_format: NotRequired[WireResponseFormat | WireJsonObjectFormat]
    stream_options: NotRequired[WireStreamOptions]


class WireUsage(TypedDict, total=False):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class WireChoiceMessage(TypedDict, total=False):
    role: str
    content: str | None


class WireChoice(TypedDict, total=False):
    index: int
    message: WireChoiceMessage
    delta: WireChoiceMessage
    finish_reason: str | None


class ChatCompletion(TypedDict, total=False):
    id: str
    object: str
    created: int
    model: str
    choices: list[WireChoice]
    usage: WireUsage | None


class RouterStatus(TypedDict, total=False):
    value: str
    args: list[str]


class WireModelMeta(TypedDict, total=False):
    n_ctx_train: int
    size: int
    n_params: int


class WireModel(TypedDict, total=False):
    id: str
    object: str
    owned_by: str
    created: int
    meta: WireModelMeta
    status: RouterStatus


class ModelList(TypedDict, total=False):
    object: str
    data: list[WireModel]


class EmbeddingItem(TypedDict):
    index: int
    embedding: list[float]


class EmbeddingList(TypedDict, total=False):
    data: list[EmbeddingItem]


def wire_messages(messages: Sequence[ChatMessage], continue_from: str | None) -> list[WireMessage]:
    """Domain messages to the wire, with a trailing assistant prefix to continue."""
    wire: list[WireMessage] = [{"role": m.role, "content": m.content} for m in messages]
    if continue_from:
        wire.append({"role": "assistant", "content": continue_from})
    return wire


def usage_from(raw: Any) -> Usage | None:
    """Wire usage to the domain (None when the server sent none)."""
    if not isinstance(raw, dict):
        return None
    prompt = raw.get("prompt_tokens")
    completion = raw.get("completion_tokens")
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
    )


def rate(tokens: int | None, seconds: float) -> float | None:
    """Tokens per second, None when it cannot be measured."""
    if not tokens or seconds <= 0:
        return None
    return tokens / seconds


class OpenAICompatProvider:
    """An OpenAI-compatible server (see the module docstring)."""

    kind: ProviderKind = "openai_compatible"

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_token: str | None = None,
        is_local: bool | None = None,
        timeouts: HttpTimeouts | None = None,
        models_cache_s: float = 30.0,
        stream_usage: bool = True,
    ) -> None:
        root = base_url.rstrip("/")
        api_path = "/v1"
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.is_local = is_local_url(root) if is_local is None else is_local
        self.timeouts = timeouts or HttpTimeouts()
        self.http = HttpClient(provider=name, base_url=root, api_token=api_token, timeouts=self.timeouts)
        self.api = api_path
        self.stream_usage = stream_usage
        self._models_cache_s = models_cache_s
        self._models: list[ModelInfo] | None = None
        self._models_at = 0.0
        self.router_mode: bool | None = None

    # -- catalogue ---------------------------------------------------------------------------
    async def list_models(self, *, refresh: bool = False) -> list[ModelInfo]:
        """Models from `{api}/models` (cached for a few seconds)."""
        if not refresh and self._models is not None and time.monotonic() - self._models_at < self._models_cache_s:
            return list(self._models)
        models = await self._fetch_models()
        self._models = models
        self._models_at = time.monotonic()
        return list(models)

    def _forget_models(self) -> None:
        self._models = None

    async def _fetch_models(self) -> list[ModelInfo]:
        raw = await self.http.request_json(
            "GET", f"{self.api}/models", timeout_s=self.timeouts.probe_s * 2, what="listing models"
        )
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
            raise ProviderProtocolError(f"{self.name}: {self.api}/models did not return a list in 'data'")
        listing = cast(ModelList, raw)
        entries = listing.get("data", [])
        self.router_mode = any(isinstance(entry.get("status"), dict) for entry in entries)
        models: list[ModelInfo] = []
        for entry in entries:
            key = entry.get("id")
            if not isinstance(key, str):
                continue
            meta = entry.get("meta") or {}
            status = entry.get("status")
            loaded = status.get("value") == "loaded" if isinstance(status, dict) else True
            models.append(
                ModelInfo(
                    key=key,
                    provider=self.name,
                    loaded=loaded,
                    context_length=meta.get("n_ctx_train"),
                    size_bytes=meta.get("size"),
                    instance_ids=(key,) if loaded and self.router_mode else (),
                    raw=dict(entry),
                )
            )
        return models

    async def model_info(self, model: str) -> ModelInfo:
        """One model from the list; ModelNotFoundError when the server does not list it."""
        for info in await self.list_models():
            if info.key == model:
                return info
        for info in await self.list_models(refresh=True):
            if info.key == model:
                return info
        raise ModelNotFoundError(f"{self.name}: no model {model!r}", hint="list models to see what it serves")

    async def health(self) -> HealthStatus:
        """`GET {api}/models` with a short deadline; never raises."""
        try:
            status, latency, _ = await self.http.probe(f"{self.api}/models")
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return HealthStatus(ok=False, latency_ms=None, detail=f"{type(err).__name__}: {err}")
        if status >= 400:
            return HealthStatus(ok=False, latency_ms=latency, detail=f"HTTP {status}")
        return HealthStatus(ok=True, latency_ms=latency)

    # -- chat ----------------------------------------------------------------------------
    def chat_payload(self, request: ChatRequest, *, stream: bool) -> ChatCompletionRequest:
        """The wire request for a ChatRequest."""
        payload: ChatCompletionRequest = {
            "model": request.model,
            "messages": wire_messages(request.messages, request.continue_from),
            "stream": stream,
        }
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.json_schema is not None:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.json_schema, "strict": True},
            }
        if stream and self.stream_usage:
            payload["stream_options"] = {"include_usage": True}
        return payload

    @property
    def chat_path(self) -> str:
        """Where chat completions are posted."""
        return f"{self.api}/chat/completions"

    async def chat(self, request: ChatRequest) -> ChatResult:
        """One whole answer (`stream: false`)."""
        started = time.perf_counter()
        total = request.timeout_s or self.timeouts.total_s
        raw = await self.http.request_json(
            "POST", self.chat_path, payload=self.chat_payload(request, stream=False), timeout_s=total, what="chat"
        )
        latency = time.perf_counter() - started
        completion = cast(ChatCompletion, raw) if isinstance(raw, dict) else None
        choices = completion.get("choices") if completion else None
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise ProviderProtocolError(f"{self.name}: chat answer has no choices")
        choice = choices[0]
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        usage = usage_from(completion.get("usage") if completion else None) or Usage()
        return ChatResult(
            text=text if isinstance(text, str) else "",
            model=str((completion or {}).get("model") or request.model),
            provider=self.name,
            usage=usage,
            finish_reason=choice.get("finish_reason"),
            latency_ms=latency * 1000.0,
            tokens_per_s=rate(usage.completion_tokens, latency),
        )

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """SSE chat; a break midway raises StreamInterruptedError with the text so far."""
        started = time.perf_counter()
        first_s = request.first_token_timeout_s or self.timeouts.first_token_s
        total_s = request.timeout_s or self.timeouts.total_s
        first_deadline = started + min(first_s, total_s)
        total_deadline = started + total_s
        loop = asyncio.get_running_loop()
        offset = loop.time() - started
        parts: list[str] = []
        first_at: float | None = None
        finish: str | None = None
        usage: Usage | None = None
        chunks = 0
        done = False
        async with self.http.stream(
            "POST",
            self.chat_path,
            payload=self.chat_payload(request, stream=True),
            connect_deadline_s=min(first_s, total_s),
            what="streaming chat",
        ) as resp:
            parser = SSEParser()
            content_stream = resp.content
            ended_cleanly = False
            while not done and not ended_cleanly:
                deadline = first_deadline if first_at is None else total_deadline
                try:
                    async with asyncio.timeout_at(deadline + offset):
                        raw_chunk = await content_stream.readany()
                except TimeoutError as err:
                    raise deadline_error(
                        self.name, first=first_at is None, seconds=deadline - started, partial="".join(parts)
                    ) from err
                except (aiohttp.ClientError, OSError) as err:
                    raise stream_broken(self.name, err, "".join(parts)) from err
                if raw_chunk:
                    events = parser.feed(raw_chunk)
                else:
                    events = parser.close()
                    ended_cleanly = True
                for event in events:
                    data = event.data
                    if data == "[DONE]":
                        done = True
                        break
                    if not data:
                        continue
                    try:
                        obj = event.json()
                    except ValueError as err:
                        raise StreamInterruptedError(
                            f"{self.name}: the stream carried a non-JSON event: {data[:80]!r}",
                            partial_text="".join(parts),
                        ) from err
                    if event.event == "error" or (isinstance(obj, dict) and "error" in obj):
                        detail = obj.get("error") if isinstance(obj, dict) else obj
                        message = detail.get("message") if isinstance(detail, dict) else detail
                        raise StreamInterruptedError(
                            f"{self.name}: the server reported an error mid-stream: {message}",
                            partial_text="".join(parts),
                        )
                    if not isinstance(obj, dict):
                        continue
                    chunk_usage = usage_from(obj.get("usage"))
                    if chunk_usage is not None:
                        usage = chunk_usage
                    for choice in obj.get("choices") or ():
                        if not isinstance(choice, dict):
                            continue
                        delta = choice.get("delta") or {}
                        content = delta.get("content") if isinstance(delta, dict) else None
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                        if content:
                            ttft: float | None = None
                            if first_at is None:
                                first_at = time.perf_counter()
                                ttft = (first_at - started) * 1000.0
                            parts.append(content)
                            chunks += 1
                            yield ChatDelta(text=content, time_to_first_token_ms=ttft)
        if not done and finish is None:
            raise StreamInterruptedError(
                f"{self.name}: the stream ended before the answer was complete", partial_text="".join(parts)
            )
        ended = time.perf_counter()
        tokens = usage.completion_tokens if usage and usage.completion_tokens else chunks
        yield ChatDelta(
            text="",
            done=True,
            finish_reason=finish,
            usage=usage or Usage(),
            time_to_first_token_ms=(first_at - started) * 1000.0 if first_at is not None else None,
            tokens_per_s=rate(tokens - 1, ended - first_at) if first_at is not None and tokens > 1 else None,
            elapsed_ms=(ended - started) * 1000.0,
        )

    # -- memory --------------------------------------------------------------------------
    async def _require_router(self, action: str) -> None:
        if self.router_mode is None:
            await self.list_models(refresh=True)
        if not self.router_mode:
            raise ProviderError(
                f"{self.name}: this server serves the model it was started with; it cannot {action} models",
                hint="start llama-server in router mode (without --model) to load and unload over HTTP",
            )

    async def load(self, model: str, config: LoadConfig | None = None) -> LoadedInstance:
        """llama.cpp router: `POST /models/load`; other servers cannot load over HTTP."""
        await self._require_router("load")
        started = time.perf_counter()
        await self.http.request_json("POST", "/models/load", payload={"model": model}, what=f"loading {model}")
        self._forget_models()
        return LoadedInstance(model=model, instance_id=model, load_time_s=time.perf_counter() - started)

    async def unload(self, model: str, *, instance_id: str | None = None) -> None:
        """llama.cpp router: `POST /models/unload`."""
        await self._require_router("unload")
        await self.http.request_json(
            "POST", "/models/unload", payload={"model": instance_id or model}, what=f"unloading {model}"
        )
        self._forget_models()

    async def download(self, model: str, *, quantization: str | None = None) -> AsyncIterator[DownloadProgress]:
        """OpenAI-compatible servers have no download API."""
        raise DownloadError(
            f"{self.name}: an OpenAI-compatible server has no API to download {model!r}",
            hint="download the GGUF yourself (or use LM Studio / Ollama) and point the server at it",
        )
        yield DownloadProgress(status="unreachable")  # makes this an async generator

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """`POST {api}/embeddings`."""
        raw = await self.http.request_json(
            "POST", f"{self.api}/embeddings", payload={"model": model, "input": list(texts)}, what="embeddings"
        )
        listing = cast(EmbeddingList, raw) if isinstance(raw, dict) else None
        items = listing.get("data") if listing else None
        if not isinstance(items, list) or len(items) != len(texts):
            raise ProviderProtocolError(f"{self.name}: embeddings answer does not match the {len(texts)} inputs")
        ordered = sorted(items, key=lambda item: item.get("index", 0))
        return [list(item["embedding"]) for item in ordered]

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self.http.aclose()
