"""Ollama's native API (ollama/ollama `docs/api.md`): NDJSON streaming, keep-alive memory control.

Downloaded models come from `/api/tags`, loaded ones from `/api/ps` (`size_vram`, `expires_at`);
details from `/api/show`. A chat with no messages loads a model, the same with `keep_alive: 0`
unloads it. `/api/pull` streams progress and verifies each layer's sha256 itself: a digest
mismatch arrives as an error line and becomes ChecksumMismatchError. Tokens per second come from
the server's own `eval_count / eval_duration`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, NotRequired, TypedDict, cast

import aiohttp

from bot.engine.providers._http import HttpClient, HttpTimeouts, deadline_error, is_local_url, stream_broken
from bot.engine.providers.port import (
    ChatDelta,
    ChatRequest,
    ChatResult,
    ChecksumMismatchError,
    DownloadError,
    DownloadProgress,
    HealthStatus,
    LoadConfig,
    LoadedInstance,
    ModelInfo,
    ProviderKind,
    ProviderProtocolError,
    StreamInterruptedError,
    Usage,
)

# -- wire types ------------------------------------------------------------------------------


class OllamaDetails(TypedDict, total=False):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class OllamaTag(TypedDict, total=False):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaDetails


class OllamaRunning(OllamaTag, total=False):
    expires_at: str
    size_vram: int
    context_length: int


class OllamaShow(TypedDict, total=False):
    modelfile: str
    parameters: str
    template: str
    details: OllamaDetails
    model_info: dict[str, Any]
    capabilities: list[str]


class OllamaMessage(TypedDict):
    role: str
    content: str


class OllamaOptions(TypedDict, total=False):
    temperature: float
    num_predict: int
    stop: list[str]
    num_ctx: int
    num_gpu: int


class OllamaChatRequest(TypedDict):
    model: str
    messages: list[OllamaMessage]
    stream: bool
    format: NotRequired[Mapping[str, Any]]
    options: NotRequired[OllamaOptions]
    keep_alive: NotRequired[int | float | str]


class OllamaChatChunk(TypedDict, total=False):
    model: str
    created_at: str
    message: OllamaMessage
    done: bool
    done_reason: str
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    error: str


class OllamaPullProgress(TypedDict, total=False):
    status: str
    digest: str
    total: int
    completed: int
    error: str


def _server_rate(chunk: Mapping[str, Any]) -> float | None:
    count, duration = chunk.get("eval_count"), chunk.get("eval_duration")
    if isinstance(count, int) and isinstance(duration, int) and duration > 0 and count > 0:
        return count / duration * 1e9
    return None


def _usage(chunk: Mapping[str, Any]) -> Usage:
    prompt, completion = chunk.get("prompt_eval_count"), chunk.get("eval_count")
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
    )


class OllamaProvider:
    """An Ollama server (see the module docstring)."""

    kind: ProviderKind = "ollama"

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_token: str | None = None,
        is_local: bool | None = None,
        timeouts: HttpTimeouts | None = None,
        models_cache_s: float = 30.0,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.is_local = is_local_url(self.base_url) if is_local is None else is_local
        self.timeouts = timeouts or HttpTimeouts()
        self.http = HttpClient(provider=name, base_url=self.base_url, api_token=api_token, timeouts=self.timeouts)
        self._models_cache_s = models_cache_s
        self._models: list[ModelInfo] | None = None
        self._models_at = 0.0

    # -- catalogue -----------------------------------------------------------------------
    async def list_models(self, *, refresh: bool = False) -> list[ModelInfo]:
        """`/api/tags` merged with `/api/ps` (cached for a few seconds)."""
        if not refresh and self._models is not None and time.monotonic() - self._models_at < self._models_cache_s:
            return list(self._models)
        tags, running = await asyncio.gather(
            self.http.request_json("GET", "/api/tags", timeout_s=self.timeouts.probe_s * 2, what="listing models"),
            self.http.request_json("GET", "/api/ps", timeout_s=self.timeouts.probe_s * 2, what="listing loaded models"),
        )
        if not isinstance(tags, dict) or not isinstance(tags.get("models"), list):
            raise ProviderProtocolError(f"{self.name}: /api/tags has no 'models' list")
        loaded: dict[str, OllamaRunning] = {}
        if isinstance(running, dict):
            for entry in running.get("models") or []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    loaded[entry["name"]] = cast(OllamaRunning, entry)
        models = [self._info(cast(OllamaTag, tag), loaded.get(str(tag.get("name")))) for tag in tags["models"]]
        self._models = [m for m in models if m.key]
        self._models_at = time.monotonic()
        return list(self._models)

    def _info(self, tag: OllamaTag, running: OllamaRunning | None) -> ModelInfo:
        details = tag.get("details") or {}
        return ModelInfo(
            key=str(tag.get("name") or ""),
            provider=self.name,
            loaded=running is not None,
            family=details.get("family"),
            size_bytes=tag.get("size"),
            quantization=details.get("quantization_level"),
            context_length=running.get("context_length") if running else None,
            parameters=details.get("parameter_size"),
            instance_ids=(str(tag.get("name")),) if running else (),
            model_type="llm",
            vram_bytes=running.get("size_vram") if running else None,
            raw={"tag": dict(tag), "ps": dict(running) if running else None},
        )

    async def model_info(self, model: str) -> ModelInfo:
        """`/api/show` for context length and capabilities, plus the list's facts."""
        raw = await self.http.request_json("POST", "/api/show", payload={"model": model}, what=f"showing {model}")
        show = cast(OllamaShow, raw) if isinstance(raw, dict) else {}
        listed = next((m for m in await self.list_models() if m.key in (model, f"{model}:latest")), None)
        details = show.get("details") or {}
        info = show.get("model_info") or {}
        arch = info.get("general.architecture")
        context = info.get(f"{arch}.context_length") if isinstance(arch, str) else None
        capabilities = frozenset(c for c in show.get("capabilities") or [] if isinstance(c, str))
        return ModelInfo(
            key=listed.key if listed else model,
            provider=self.name,
            loaded=listed.loaded if listed else False,
            family=details.get("family") or (arch if isinstance(arch, str) else None),
            size_bytes=listed.size_bytes if listed else None,
            quantization=details.get("quantization_level"),
            context_length=context if isinstance(context, int) else None,
            parameters=details.get("parameter_size"),
            capabilities=capabilities,
            instance_ids=listed.instance_ids if listed else (),
            model_type="embedding" if "embedding" in capabilities and "completion" not in capabilities else "llm",
            vram_bytes=listed.vram_bytes if listed else None,
            raw=dict(show),
        )

    async def health(self) -> HealthStatus:
        """`GET /api/version`; never raises."""
        try:
            status, latency, body = await self.http.probe("/api/version")
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return HealthStatus(ok=False, latency_ms=None, detail=f"{type(err).__name__}: {err}")
        if status >= 400:
            return HealthStatus(ok=False, latency_ms=latency, detail=f"HTTP {status}")
        version = body.get("version") if isinstance(body, dict) else None
        return HealthStatus(ok=True, latency_ms=latency, version=version if isinstance(version, str) else None)

    # -- chat ----------------------------------------------------------------------------
    def chat_payload(self, request: ChatRequest, *, stream: bool) -> OllamaChatRequest:
        """The wire request for a ChatRequest."""
        messages: list[OllamaMessage] = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.continue_from:
            messages.append({"role": "assistant", "content": request.continue_from})
        payload: OllamaChatRequest = {"model": request.model, "messages": messages, "stream": stream}
        options: OllamaOptions = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.stop:
            options["stop"] = list(request.stop)
        if options:
            payload["options"] = options
        if request.json_schema is not None:
            payload["format"] = request.json_schema
        return payload

    async def chat(self, request: ChatRequest) -> ChatResult:
        """`POST /api/chat` with `stream: false`."""
        started = time.perf_counter()
        raw = await self.http.request_json(
            "POST",
            "/api/chat",
            payload=self.chat_payload(request, stream=False),
            timeout_s=request.timeout_s or self.timeouts.total_s,
            what="chat",
        )
        latency = time.perf_counter() - started
        if not isinstance(raw, dict) or not isinstance(raw.get("message"), dict):
            raise ProviderProtocolError(f"{self.name}: chat answer has no message")
        chunk = cast(OllamaChatChunk, raw)
        if "error" in chunk:
            raise ProviderProtocolError(f"{self.name}: {chunk['error']}")
        return ChatResult(
            text=str(chunk["message"].get("content") or ""),
            model=str(chunk.get("model") or request.model),
            provider=self.name,
            usage=_usage(chunk),
            finish_reason=chunk.get("done_reason"),
            latency_ms=latency * 1000.0,
            tokens_per_s=_server_rate(chunk),
        )

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """NDJSON chat; an `{"error"}` line or a cut raises StreamInterruptedError with the text so far."""
        started = time.perf_counter()
        first_s = request.first_token_timeout_s or self.timeouts.first_token_s
        total_s = request.timeout_s or self.timeouts.total_s
        offset = asyncio.get_running_loop().time() - started
        parts: list[str] = []
        first_at: float | None = None
        final: OllamaChatChunk | None = None
        async with self.http.stream(
            "POST",
            "/api/chat",
            payload=self.chat_payload(request, stream=True),
            connect_deadline_s=min(first_s, total_s),
            what="streaming chat",
        ) as resp:
            content = resp.content
            while True:
                deadline = started + (min(first_s, total_s) if first_at is None else total_s)
                try:
                    async with asyncio.timeout_at(deadline + offset):
                        line = await content.readline()
                except TimeoutError as err:
                    raise deadline_error(
                        self.name, first=first_at is None, seconds=deadline - started, partial="".join(parts)
                    ) from err
                except (aiohttp.ClientError, OSError) as err:
                    raise stream_broken(self.name, err, "".join(parts)) from err
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    chunk = cast(OllamaChatChunk, json.loads(line))
                except ValueError as err:
                    raise StreamInterruptedError(
                        f"{self.name}: the stream carried a line that is not JSON", partial_text="".join(parts)
                    ) from err
                if "error" in chunk:
                    raise StreamInterruptedError(
                        f"{self.name}: the server reported an error mid-stream: {chunk['error']}",
                        partial_text="".join(parts),
                    )
                message = chunk.get("message")
                text = message.get("content") if isinstance(message, dict) else None
                if text:
                    now = time.perf_counter()
                    ttft: float | None = None
                    if first_at is None:
                        first_at = now
                        ttft = (now - started) * 1000.0
                    parts.append(text)
                    yield ChatDelta(text=text, time_to_first_token_ms=ttft)
                if chunk.get("done"):
                    final = chunk
                    break
        if final is None:
            raise StreamInterruptedError(
                f"{self.name}: the stream ended before the answer was complete", partial_text="".join(parts)
            )
        ended = time.perf_counter()
        yield ChatDelta(
            text="",
            done=True,
            finish_reason=final.get("done_reason"),
            usage=_usage(final),
            time_to_first_token_ms=(first_at - started) * 1000.0 if first_at is not None else None,
            tokens_per_s=_server_rate(final),
            elapsed_ms=(ended - started) * 1000.0,
        )

    # -- memory --------------------------------------------------------------------------
    async def load(self, model: str, config: LoadConfig | None = None) -> LoadedInstance:
        """A chat request with no messages; `keep_alive` and `num_ctx` from the config."""
        config = config or LoadConfig()
        payload: OllamaChatRequest = {"model": model, "messages": [], "stream": False}
        if config.keep_alive_s is not None:
            payload["keep_alive"] = config.keep_alive_s
        options: OllamaOptions = {}
        if config.context_length is not None:
            options["num_ctx"] = config.context_length
        if "num_gpu" in config.extra:
            options["num_gpu"] = int(config.extra["num_gpu"])
        if options:
            payload["options"] = options
        started = time.perf_counter()
        raw = await self.http.request_json(
            "POST", "/api/chat", payload=payload, timeout_s=self.timeouts.total_s, what=f"loading {model}"
        )
        self._models = None
        chunk = cast(OllamaChatChunk, raw) if isinstance(raw, dict) else {}
        load_ns = chunk.get("load_duration")
        return LoadedInstance(
            model=model,
            instance_id=model,
            load_time_s=load_ns / 1e9 if isinstance(load_ns, int) else time.perf_counter() - started,
        )

    async def unload(self, model: str, *, instance_id: str | None = None) -> None:
        """A chat request with no messages and `keep_alive: 0`."""
        payload: OllamaChatRequest = {"model": instance_id or model, "messages": [], "stream": False, "keep_alive": 0}
        await self.http.request_json("POST", "/api/chat", payload=payload, what=f"unloading {model}")
        self._models = None

    async def download(self, model: str, *, quantization: str | None = None) -> AsyncIterator[DownloadProgress]:
        """`POST /api/pull` streaming progress; `quantization` becomes the `:tag` when none is given."""
        name = model if quantization is None or ":" in model.rsplit("/", 1)[-1] else f"{model}:{quantization}"
        started = time.perf_counter()
        async with self.http.stream(
            "POST",
            "/api/pull",
            payload={"model": name, "stream": True},
            connect_deadline_s=self.timeouts.total_s,
            what=f"pulling {name}",
        ) as resp:
            try:
                async for line in resp.content:
                    if not line.strip():
                        continue
                    try:
                        event = cast(OllamaPullProgress, json.loads(line))
                    except ValueError as err:
                        raise ProviderProtocolError(f"{self.name}: pull progress line is not JSON") from err
                    if "error" in event:
                        message = str(event["error"])
                        if "digest mismatch" in message.lower() or "checksum" in message.lower():
                            raise ChecksumMismatchError(f"{self.name}: pulling {name}: {message}")
                        raise DownloadError(f"{self.name}: pulling {name}: {message}")
                    status = str(event.get("status", ""))
                    completed, total = event.get("completed"), event.get("total")
                    elapsed = time.perf_counter() - started
                    done = status == "success"
                    if done:
                        self._models = None
                    yield DownloadProgress(
                        status=status,
                        downloaded_bytes=completed,
                        total_bytes=total,
                        bytes_per_s=completed / elapsed if isinstance(completed, int) and elapsed > 0 else None,
                        done=done,
                    )
                    if done:
                        return
            except (aiohttp.ClientError, OSError) as err:
                raise DownloadError(f"{self.name}: the pull of {name} broke: {err}") from err
        raise DownloadError(f"{self.name}: the pull of {name} ended without 'success'")

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """`POST /api/embed`."""
        raw = await self.http.request_json(
            "POST", "/api/embed", payload={"model": model, "input": list(texts)}, what="embeddings"
        )
        vectors = raw.get("embeddings") if isinstance(raw, dict) else None
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise ProviderProtocolError(f"{self.name}: embeddings answer does not match the {len(texts)} inputs")
        return [list(map(float, vector)) for vector in vectors]

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self.http.aclose()
