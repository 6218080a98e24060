"""The one interface the engine uses to think, whatever server runs the model.

Wire payloads of each server stay in that server's module as TypedDicts; what crosses this port
are the frozen dataclasses below. Every implementation raises only the ProviderError tree:

    ProviderError (bot.errors.OrchestratorError)
    ├── ProviderUnavailableError      connect refused/reset, DNS, TLS — retryable elsewhere
    ├── ProviderTimeoutError          connect, first-token or total deadline passed — retryable
    ├── ProviderHTTPError             a non-2xx answer (status, body excerpt, retry_after)
    │   └── ProviderRateLimitedError  429, carries retry_after seconds
    ├── ProviderProtocolError         the answer does not follow the server's protocol
    ├── StreamInterruptedError        a stream broke midway; carries the partial text so far
    ├── ModelNotFoundError            the server does not know that model
    ├── ModelDoesNotFitError          not enough VRAM/RAM even after unloading idle models
    └── DownloadError
        └── ChecksumMismatchError     the downloaded bytes are not what the hub promised
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from bot.errors import OrchestratorError

ProviderKind = Literal["lmstudio", "ollama", "openai_compatible", "embedded"]
Role = Literal["system", "user", "assistant"]


class ProviderError(OrchestratorError):
    """Root of every failure talking to an LLM server."""

    retryable: bool = False


class ProviderUnavailableError(ProviderError):
    """The server cannot be reached."""

    retryable = True


class ProviderTimeoutError(ProviderError):
    """A deadline passed before the server answered (or before the first token)."""

    retryable = True


class ProviderHTTPError(ProviderError):
    """The server answered with an error status."""

    def __init__(
        self, message: str, *, status: int, body: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body[:500]
        self.retry_after = retry_after
        self.retryable = status >= 500 or status in (408, 409, 425, 429)


class ProviderRateLimitedError(ProviderHTTPError):
    """HTTP 429; `retry_after` (seconds) is honoured by the router."""


class ProviderProtocolError(ProviderError):
    """The server's answer does not follow its protocol (bad JSON, missing fields)."""


class StreamInterruptedError(ProviderError):
    """A streaming answer broke midway; `partial_text` is what arrived before the break."""

    retryable = True

    def __init__(self, message: str, *, partial_text: str) -> None:
        super().__init__(message)
        self.partial_text = partial_text


class ModelNotFoundError(ProviderError):
    """The server does not have the requested model."""


class ModelDoesNotFitError(ProviderError):
    """Loading the model would exceed free memory even after unloading idle models."""


class DownloadError(ProviderError):
    """A model download failed."""


class ChecksumMismatchError(DownloadError):
    """The downloaded file's sha256 differs from the hub's; the file was deleted."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation sent to a model."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a server says about one model; unknown facts are None, never guessed."""

    key: str
    provider: str
    loaded: bool
    display_name: str | None = None
    family: str | None = None
    size_bytes: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    parameters: str | None = None
    capabilities: frozenset[str] = frozenset()
    instance_ids: tuple[str, ...] = ()
    model_type: str | None = None
    vram_bytes: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as reported by the server (None when it does not report them)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request, the same for every server kind.

    `json_schema` asks for structured output in the server's own way (response_format on
    LM Studio/llama.cpp/OpenAI, `format` on Ollama). `continue_from` is partial assistant text
    to continue rather than restart (used when a stream is resumed on a fallback model).
    """

    model: str
    messages: Sequence[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    json_schema: Mapping[str, Any] | None = None
    stop: Sequence[str] = ()
    continue_from: str | None = None
    timeout_s: float | None = None
    first_token_timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A whole answer with the measurements the quality metrics need."""

    text: str
    model: str
    provider: str
    usage: Usage
    finish_reason: str | None
    latency_ms: float
    time_to_first_token_ms: float | None = None
    tokens_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """One piece of a streamed answer; the last one has `done=True` and the totals."""

    text: str
    done: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    time_to_first_token_ms: float | None = None
    tokens_per_s: float | None = None
    elapsed_ms: float | None = None


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """Whether the server answers, how fast, and what it said when it did not."""

    ok: bool
    latency_ms: float | None
    detail: str = ""
    version: str | None = None


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """Options for loading a model; None leaves the server's default."""

    context_length: int | None = None
    gpu_offload: float | None = None
    flash_attention: bool | None = None
    keep_alive_s: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoadedInstance:
    """A model instance a server reports as loaded after a load call."""

    model: str
    instance_id: str
    load_time_s: float | None = None


@dataclass(frozen=True, slots=True)
class DownloadProgress:
    """One progress event of a model download (renderable as a progress bar)."""

    status: str
    downloaded_bytes: int | None = None
    total_bytes: int | None = None
    bytes_per_s: float | None = None
    done: bool = False
    job_id: str | None = None

    @property
    def fraction(self) -> float | None:
        """Completed share 0..1, when the total is known."""
        if not self.total_bytes or self.downloaded_bytes is None:
            return None
        return min(1.0, self.downloaded_bytes / self.total_bytes)


@runtime_checkable
class LLMProvider(Protocol):
    """One LLM server. Implementations hold no retry loop: the router is the only one."""

    name: str
    kind: ProviderKind
    base_url: str
    is_local: bool

    async def list_models(self, *, refresh: bool = False) -> list[ModelInfo]:
        """Every model the server can serve, loaded or not (cached; `refresh` bypasses)."""
        ...

    async def model_info(self, model: str) -> ModelInfo:
        """One model's details; ModelNotFoundError when unknown."""
        ...

    async def health(self) -> HealthStatus:
        """A cheap liveness probe that never raises."""
        ...

    async def chat(self, request: ChatRequest) -> ChatResult:
        """One whole answer."""
        ...

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The answer as it is generated; a break midway raises StreamInterruptedError."""
        ...

    async def load(self, model: str, config: LoadConfig | None = None) -> LoadedInstance:
        """Load a model into memory."""
        ...

    async def unload(self, model: str, *, instance_id: str | None = None) -> None:
        """Free a loaded model (all its instances unless one is named)."""
        ...

    def download(self, model: str, *, quantization: str | None = None) -> AsyncIterator[DownloadProgress]:
        """Fetch a model through the server's own download API, yielding progress."""
        ...

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """Embedding vectors, for servers that have an embeddings endpoint."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
