"""LM Studio: its native REST API for models and memory, its OpenAI-compatible API for chat.

Model management uses the v1 REST API of LM Studio 0.4+ (`/api/v1/models`, `/models/load`,
`/models/unload`, `/models/download` and `/models/download/status/:job_id`; lmstudio-ai/docs
`0_app/4_api/2_rest/*`). Older servers answer 404 there, and the client falls back to the v0 API
(`/api/v0/models`, which still says loaded/not-loaded) and finally to `/v1/models`. Chat and
streaming always use `/v1/chat/completions` (SSE), shared with `OpenAICompatProvider`.

Without v1 there is no REST load/unload: loading falls back to LM Studio's just-in-time loading
(a one-token request), unloading is refused with a hint. The download API returns no checksum,
so LM Studio downloads cannot be verified here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, NotRequired, TypedDict, cast

import aiohttp

from bot.engine.providers._http import HttpTimeouts
from bot.engine.providers.openai_compat import OpenAICompatProvider
from bot.engine.providers.port import (
    ChatMessage,
    ChatRequest,
    DownloadError,
    DownloadProgress,
    HealthStatus,
    LoadConfig,
    LoadedInstance,
    ModelInfo,
    ModelNotFoundError,
    ProviderError,
    ProviderHTTPError,
    ProviderKind,
    ProviderProtocolError,
)

ApiLevel = Literal["v1", "v0", "openai"]

# -- wire types: REST v1 --------------------------------------------------------------------


class V1Quantization(TypedDict, total=False):
    name: str | None
    bits_per_weight: float | None


class V1InstanceConfig(TypedDict, total=False):
    context_length: int
    eval_batch_size: int
    parallel: int
    flash_attention: bool
    num_experts: int
    offload_kv_cache_to_gpu: bool


class V1LoadedInstance(TypedDict, total=False):
    id: str
    config: V1InstanceConfig


class V1Capabilities(TypedDict, total=False):
    vision: bool
    trained_for_tool_use: bool


class V1Model(TypedDict, total=False):
    type: Literal["llm", "embedding"]
    publisher: str
    key: str
    display_name: str
    architecture: str | None
    quantization: V1Quantization | None
    size_bytes: int
    params_string: str | None
    loaded_instances: list[V1LoadedInstance]
    max_context_length: int
    format: Literal["gguf", "mlx"] | None
    capabilities: V1Capabilities
    description: str | None


class V1ModelList(TypedDict):
    models: list[V1Model]


class V1LoadRequest(TypedDict):
    model: str
    context_length: NotRequired[int]
    eval_batch_size: NotRequired[int]
    flash_attention: NotRequired[bool]
    num_experts: NotRequired[int]
    offload_kv_cache_to_gpu: NotRequired[bool]
    echo_load_config: NotRequired[bool]


class V1LoadResponse(TypedDict, total=False):
    type: Literal["llm", "embedding"]
    instance_id: str
    model_instance_id: str  # the name in the 0.4.0 betas
    load_time_seconds: float
    status: Literal["loaded"]
    load_config: V1InstanceConfig


class V1UnloadRequest(TypedDict):
    instance_id: str


class V1DownloadRequest(TypedDict):
    model: str
    quantization: NotRequired[str]


class V1DownloadJob(TypedDict, total=False):
    job_id: str
    status: Literal["downloading", "paused", "completed", "failed", "already_downloaded"]
    bytes_per_second: float
    estimated_completion: str
    completed_at: str
    total_size_bytes: int
    downloaded_bytes: int
    started_at: str


# -- wire types: REST v0 --------------------------------------------------------------------


class V0Model(TypedDict, total=False):
    id: str
    object: str
    type: Literal["llm", "vlm", "embeddings"]
    publisher: str
    arch: str
    compatibility_type: str
    quantization: str
    state: Literal["loaded", "not-loaded"]
    max_context_length: int
    loaded_context_length: int


class V0ModelList(TypedDict):
    object: str
    data: list[V0Model]


_LOAD_KEYS = ("eval_batch_size", "num_experts", "offload_kv_cache_to_gpu")


class LMStudioProvider(OpenAICompatProvider):
    """An LM Studio server (see the module docstring)."""

    kind: ProviderKind = "lmstudio"

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_token: str | None = None,
        is_local: bool | None = None,
        timeouts: HttpTimeouts | None = None,
        models_cache_s: float = 30.0,
        download_poll_s: float = 1.0,
    ) -> None:
        super().__init__(
            name=name,
            base_url=base_url,
            api_token=api_token,
            is_local=is_local,
            timeouts=timeouts,
            models_cache_s=models_cache_s,
        )
        self.download_poll_s = download_poll_s
        self.api_level: ApiLevel | None = None

    # -- catalogue -----------------------------------------------------------------------
    async def _fetch_models(self) -> list[ModelInfo]:
        if self.api_level in (None, "v1"):
            try:
                raw = await self.http.request_json("GET", "/api/v1/models", what="listing models (REST v1)")
            except ProviderHTTPError as err:
                if err.status != 404:
                    raise
            else:
                self.api_level = "v1"
                return self._from_v1(raw)
        if self.api_level in (None, "v0"):
            try:
                raw = await self.http.request_json("GET", "/api/v0/models", what="listing models (REST v0)")
            except ProviderHTTPError as err:
                if err.status != 404:
                    raise
            else:
                self.api_level = "v0"
                return self._from_v0(raw)
        self.api_level = "openai"
        return await super()._fetch_models()

    def _from_v1(self, raw: Any) -> list[ModelInfo]:
        if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
            raise ProviderProtocolError(f"{self.name}: /api/v1/models has no 'models' list")
        models: list[ModelInfo] = []
        for entry in cast(V1ModelList, raw)["models"]:
            key = entry.get("key")
            if not isinstance(key, str):
                continue
            instances = [inst for inst in entry.get("loaded_instances") or [] if isinstance(inst, dict)]
            capabilities = {name for name, on in (entry.get("capabilities") or {}).items() if on is True}
            if entry.get("type") == "embedding":
                capabilities.add("embedding")
            quant = entry.get("quantization") or {}
            loaded_context = instances[0].get("config", {}).get("context_length") if instances else None
            models.append(
                ModelInfo(
                    key=key,
                    provider=self.name,
                    loaded=bool(instances),
                    display_name=entry.get("display_name"),
                    family=entry.get("architecture"),
                    size_bytes=entry.get("size_bytes"),
                    quantization=quant.get("name") if isinstance(quant, dict) else None,
                    context_length=loaded_context or entry.get("max_context_length"),
                    parameters=entry.get("params_string"),
                    capabilities=frozenset(capabilities),
                    instance_ids=tuple(str(inst["id"]) for inst in instances if "id" in inst),
                    model_type=entry.get("type"),
                    raw=dict(entry),
                )
            )
        return models

    def _from_v0(self, raw: Any) -> list[ModelInfo]:
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
            raise ProviderProtocolError(f"{self.name}: /api/v0/models has no 'data' list")
        models: list[ModelInfo] = []
        for entry in cast(V0ModelList, raw)["data"]:
            key = entry.get("id")
            if not isinstance(key, str):
                continue
            loaded = entry.get("state") == "loaded"
            kind = entry.get("type")
            caps = {"embedding"} if kind == "embeddings" else {"vision"} if kind == "vlm" else set()
            models.append(
                ModelInfo(
                    key=key,
                    provider=self.name,
                    loaded=loaded,
                    family=entry.get("arch"),
                    quantization=entry.get("quantization"),
                    context_length=entry.get("loaded_context_length") or entry.get("max_context_length"),
                    capabilities=frozenset(caps),
                    instance_ids=(key,) if loaded else (),
                    model_type="embedding" if kind == "embeddings" else "llm",
                    raw=dict(entry),
                )
            )
        return models

    async def health(self) -> HealthStatus:
        """`GET /api/v1/models` (or `/v1/models` on older servers); never raises."""
        path = "/v1/models" if self.api_level in ("v0", "openai") else "/api/v1/models"
        try:
            status, latency, _ = await self.http.probe(path)
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return HealthStatus(ok=False, latency_ms=None, detail=f"{type(err).__name__}: {err}")
        if status == 404 and path == "/api/v1/models":
            self.api_level = None
            try:
                status, latency, _ = await self.http.probe("/v1/models")
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                return HealthStatus(ok=False, latency_ms=None, detail=f"{type(err).__name__}: {err}")
        if status >= 400:
            return HealthStatus(ok=False, latency_ms=latency, detail=f"HTTP {status}")
        return HealthStatus(ok=True, latency_ms=latency)

    # -- memory --------------------------------------------------------------------------
    async def _level(self) -> ApiLevel:
        if self.api_level is None:
            await self.list_models(refresh=True)
        assert self.api_level is not None
        return self.api_level

    async def load(self, model: str, config: LoadConfig | None = None) -> LoadedInstance:
        """`POST /api/v1/models/load` with the load config; JIT load on servers before 0.4."""
        config = config or LoadConfig()
        if await self._level() != "v1":
            return await self._jit_load(model)
        payload: V1LoadRequest = {"model": model}
        if config.context_length is not None:
            payload["context_length"] = config.context_length
        if config.flash_attention is not None:
            payload["flash_attention"] = config.flash_attention
        for key in _LOAD_KEYS:
            if key in config.extra:
                payload[key] = config.extra[key]  # type: ignore[literal-required]
        started = time.perf_counter()
        raw = await self.http.request_json(
            "POST", "/api/v1/models/load", payload=payload, timeout_s=self.timeouts.total_s, what=f"loading {model}"
        )
        self._forget_models()
        answer = cast(V1LoadResponse, raw) if isinstance(raw, dict) else {}
        instance_id = answer.get("instance_id") or answer.get("model_instance_id")
        if not isinstance(instance_id, str):
            raise ProviderProtocolError(f"{self.name}: the load answer carries no instance id")
        load_time = answer.get("load_time_seconds")
        return LoadedInstance(
            model=model,
            instance_id=instance_id,
            load_time_s=float(load_time) if isinstance(load_time, int | float) else time.perf_counter() - started,
        )

    async def _jit_load(self, model: str) -> LoadedInstance:
        # LM Studio < 0.4 has no REST load; its just-in-time loading loads on first use.
        started = time.perf_counter()
        await self.chat(ChatRequest(model=model, messages=[ChatMessage(role="user", content="hi")], max_tokens=1))
        self._forget_models()
        return LoadedInstance(model=model, instance_id=model, load_time_s=time.perf_counter() - started)

    async def unload(self, model: str, *, instance_id: str | None = None) -> None:
        """`POST /api/v1/models/unload` for the named instance, or for every instance of the model."""
        if await self._level() != "v1":
            raise ProviderError(
                f"{self.name}: this LM Studio has no REST API to unload models",
                hint="update LM Studio to 0.4 or newer, or run `lms unload <model>`",
            )
        if instance_id is not None:
            targets = [instance_id]
        else:
            info = await self.model_info(model)
            targets = list(info.instance_ids)
        for target in targets:
            body: V1UnloadRequest = {"instance_id": target}
            await self.http.request_json("POST", "/api/v1/models/unload", payload=body, what=f"unloading {target}")
        self._forget_models()

    async def model_info(self, model: str) -> ModelInfo:
        """One model; refreshed once before giving up with ModelNotFoundError."""
        for refresh in (False, True):
            for info in await self.list_models(refresh=refresh):
                if info.key == model or model in info.instance_ids:
                    return info
        raise ModelNotFoundError(f"{self.name}: LM Studio has no model {model!r}", hint="download it first")

    # -- download ------------------------------------------------------------------------
    async def download(self, model: str, *, quantization: str | None = None) -> AsyncIterator[DownloadProgress]:
        """`POST /api/v1/models/download`, then poll the job's status until it ends."""
        if await self._level() != "v1":
            raise DownloadError(
                f"{self.name}: this LM Studio has no REST download API",
                hint="update LM Studio to 0.4 or newer, or run `lms get <model>`",
            )
        body: V1DownloadRequest = {"model": model}
        if quantization:
            body["quantization"] = quantization
        raw = await self.http.request_json("POST", "/api/v1/models/download", payload=body, what=f"downloading {model}")
        job = cast(V1DownloadJob, raw) if isinstance(raw, dict) else {}
        while True:
            status = job.get("status")
            progress = DownloadProgress(
                status=str(status),
                downloaded_bytes=job.get("downloaded_bytes"),
                total_bytes=job.get("total_size_bytes"),
                bytes_per_s=job.get("bytes_per_second"),
                done=status in ("completed", "already_downloaded"),
                job_id=job.get("job_id"),
            )
            if status == "failed":
                raise DownloadError(f"{self.name}: LM Studio reports the download of {model!r} failed")
            yield progress
            if progress.done:
                self._forget_models()
                return
            job_id = job.get("job_id")
            if not isinstance(job_id, str):
                raise ProviderProtocolError(f"{self.name}: download answer without a job id (status {status!r})")
            await asyncio.sleep(self.download_poll_s)
            raw = await self.http.request_json(
                "GET", f"/api/v1/models/download/status/{job_id}", what=f"download status of {model}"
            )
            job = cast(V1DownloadJob, raw) if isinstance(raw, dict) else {}
