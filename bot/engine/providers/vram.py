"""Will this model fit? Memory estimates, free VRAM/RAM, and least-recently-used idle unloading.

The estimate (documented with examples in docs/providers.md):

    total   = weights + kv_cache + overhead
    weights = the model file's size (GGUF weights are mapped as stored), else
              parameters × bits-per-weight(quantisation) / 8
    kv_cache = 2 (K and V) × layers × context × kv_heads × head_dim × bytes per element (2, f16)
    overhead = 128 MiB + 5 % of weights (compute buffers, CUDA context, scratch)

Layers, KV heads and head size come from the GGUF header when the file is readable here, else from
a table of typical shapes by parameter count. Free memory is the GPU's (NVML, summed over devices)
when an NVIDIA driver is present, else available system RAM (psutil), minus a reserve; an optional
budget caps what models may use altogether.

Errors (beyond the port's ModelDoesNotFitError):

    ProviderError
    └── InvalidGGUFError    the file is not a GGUF file we can read (truncated, hostile, unknown type)
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from bot.engine.providers.port import (
    LLMProvider,
    LoadConfig,
    LoadedInstance,
    ModelDoesNotFitError,
    ModelInfo,
    ProviderError,
)
from bot.logs import get_logger

log = get_logger(__name__)

MIB = 1024**2
GIB = 1024**3
KV_BYTES_F16 = 2
OVERHEAD_FIXED = 128 * MIB
OVERHEAD_SHARE = 0.05

# Bits per weight of llama.cpp quantisation types, block scales included (llama.cpp's quantize table).
QUANT_BITS: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "FP16": 16.0,
    "Q8_0": 8.5, "Q8_K": 8.5, "Q6_K": 6.56,
    "Q5_0": 5.5, "Q5_1": 6.0, "Q5_K": 5.5, "Q5_K_S": 5.5, "Q5_K_M": 5.69,
    "Q4_0": 4.5, "Q4_1": 5.0, "Q4_K": 4.5, "Q4_K_S": 4.58, "Q4_K_M": 4.85,
    "Q3_K_S": 3.5, "Q3_K_M": 3.91, "Q3_K_L": 4.27, "Q2_K": 2.63,
    "IQ4_XS": 4.25, "IQ4_NL": 4.5, "IQ3_XXS": 3.06, "IQ3_S": 3.44, "IQ2_XXS": 2.06, "IQ2_XS": 2.31,
    "IQ1_S": 1.56, "MXFP4": 4.25, "8BIT": 8.5, "4BIT": 4.5,
}  # fmt: skip

# Typical transformer shapes (layers, kv heads, head size) by parameter count in billions, used
# when no GGUF header is at hand. Each row is a common model of that size with grouped-query
# attention (SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B/3B, Llama-3.1-8B, Mistral-Nemo-12B,
# Qwen2.5-32B, Llama-3.1-70B, Llama-3.1-405B).
HEURISTIC_SHAPES: tuple[tuple[float, int, int, int], ...] = (
    (0.2, 30, 3, 64),
    (0.6, 24, 2, 64),
    (2.0, 16, 8, 64),
    (4.5, 28, 8, 128),
    (10.0, 32, 8, 128),
    (20.0, 40, 8, 128),
    (40.0, 64, 8, 128),
    (90.0, 80, 8, 128),
    (float("inf"), 126, 8, 128),
)


class InvalidGGUFError(ProviderError):
    """The file is not a GGUF file this reader understands."""


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the KV cache depends on; `source` says whether it was read or guessed."""

    layers: int
    kv_heads: int
    head_dim: int
    source: Literal["gguf", "heuristic"]
    trained_context: int | None = None


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Bytes a model needs when loaded with `context_length` tokens of context."""

    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    context_length: int
    shape: ModelShape
    weights_source: Literal["file size", "parameters"]

    @property
    def total_bytes(self) -> int:
        """Weights + KV cache + overhead."""
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    def describe(self) -> str:
        """One line a person can check: the total and its parts."""
        return (
            f"{gib(self.total_bytes)} = weights {gib(self.weights_bytes)} ({self.weights_source}) "
            f"+ KV cache {gib(self.kv_cache_bytes)} ({self.context_length} tokens, "
            f"{self.shape.layers} layers × {self.shape.kv_heads} KV heads × {self.shape.head_dim}, "
            f"{self.shape.source}) + overhead {gib(self.overhead_bytes)}"
        )


def gib(value: int | float) -> str:
    """Bytes as GiB with two decimals (MiB below 1 GiB)."""
    if abs(value) < GIB:
        return f"{value / MIB:.0f} MiB"
    return f"{value / GIB:.2f} GiB"


_PARAMS_RE = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*([KMBT])?\s*$", re.IGNORECASE)
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def parse_parameter_count(text: str | None) -> float | None:
    """'7B' → 7e9, '135M' → 1.35e8, '8x7B' → 5.6e10; None when it is not a count."""
    if not text:
        return None
    match = _PARAMS_RE.match(text)
    if match is None:
        return None
    experts, number, unit = match.groups()
    value = float(number) * _SCALE.get((unit or "B").upper(), 1e9)
    return value * int(experts) if experts else value


def quant_bits(quantization: str | None) -> float | None:
    """Bits per weight of a quantisation name ('Q4_K_M', 'q8_0', 'GGUF Q4_K_M' …)."""
    if not quantization:
        return None
    cleaned = quantization.upper().replace("-", "_")
    for name in sorted(QUANT_BITS, key=len, reverse=True):
        if re.search(rf"(^|[^A-Z0-9]){re.escape(name)}($|[^A-Z0-9])", cleaned):
            return QUANT_BITS[name]
    return None


def heuristic_shape(parameters: float | None) -> ModelShape:
    """A typical shape for a model of this many parameters (8B-like when unknown)."""
    billions = (parameters or 8e9) / 1e9
    for ceiling, layers, kv_heads, head_dim in HEURISTIC_SHAPES:
        if billions <= ceiling:
            return ModelShape(layers=layers, kv_heads=kv_heads, head_dim=head_dim, source="heuristic")
    raise AssertionError("unreachable: the table ends with infinity")


def kv_cache_bytes(shape: ModelShape, context_length: int, *, bytes_per_element: int = KV_BYTES_F16) -> int:
    """2 × layers × context × kv_heads × head_dim × bytes."""
    return 2 * shape.layers * context_length * shape.kv_heads * shape.head_dim * bytes_per_element


def estimate_memory(
    *,
    size_bytes: int | None,
    parameters: float | None,
    quantization: str | None,
    context_length: int,
    shape: ModelShape | None = None,
    kv_bytes_per_element: int = KV_BYTES_F16,
) -> MemoryEstimate | None:
    """The memory a model needs, or None when neither its file size nor its parameters are known."""
    if context_length <= 0:
        raise ValueError("context_length must be positive")
    if size_bytes:
        weights, source = int(size_bytes), "file size"
    elif parameters:
        bits = quant_bits(quantization) or 16.0
        weights, source = int(parameters * bits / 8), "parameters"
    else:
        return None
    resolved = shape or heuristic_shape(parameters or _params_from_size(weights, quantization))
    return MemoryEstimate(
        weights_bytes=weights,
        kv_cache_bytes=kv_cache_bytes(resolved, context_length, bytes_per_element=kv_bytes_per_element),
        overhead_bytes=int(OVERHEAD_FIXED + OVERHEAD_SHARE * weights),
        context_length=context_length,
        shape=resolved,
        weights_source=source,  # type: ignore[arg-type]
    )


def _params_from_size(size_bytes: int, quantization: str | None) -> float:
    return size_bytes * 8 / (quant_bits(quantization) or 4.85)


DEFAULT_CONTEXT = 4096


def estimate_for_model(
    info: ModelInfo, *, context_length: int | None = None, gguf_path: Path | None = None
) -> MemoryEstimate | None:
    """The estimate for a model a server described, reading its GGUF header when given a path."""
    shape = None
    if gguf_path is not None:
        shape = shape_from_gguf(read_gguf_metadata(gguf_path))
    context = context_length or info.context_length or (shape.trained_context if shape else None)
    return estimate_memory(
        size_bytes=info.size_bytes,
        parameters=parse_parameter_count(info.parameters),
        quantization=info.quantization,
        context_length=min(context or DEFAULT_CONTEXT, 1 << 22),
        shape=shape,
    )


# -- GGUF header ---------------------------------------------------------------------------------

_GGUF_MAGIC = b"GGUF"
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"
}  # fmt: skip
_STRING, _ARRAY = 8, 9
_MAX_STRING = 1 << 20
_MAX_ARRAY = 1 << 24
_MAX_KV = 1 << 16


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value header of a GGUF file (arrays longer than 64 items are reduced to their length).

    Every length is bounded before it is trusted, so a truncated or hostile file raises
    InvalidGGUFError instead of exhausting memory.
    """
    try:
        with path.open("rb") as handle:
            return _read_header(handle, path)
    except OSError as err:
        raise InvalidGGUFError(f"cannot read {path}: {err}") from err


def _read_header(handle: BinaryIO, path: Path) -> dict[str, Any]:
    def take(count: int) -> bytes:
        data = handle.read(count)
        if len(data) != count:
            raise InvalidGGUFError(f"{path} ends inside its GGUF header")
        return data

    def scalar(kind: int) -> Any:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

    def string() -> str:
        length = scalar(10)
        if length > _MAX_STRING:
            raise InvalidGGUFError(f"{path}: a {length}-byte string in the header is implausible")
        return take(length).decode("utf-8", "replace")

    def value(kind: int) -> Any:
        if kind in _SCALARS:
            return scalar(kind)
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            item_kind, count = scalar(4), scalar(10)
            if count > _MAX_ARRAY:
                raise InvalidGGUFError(f"{path}: an array of {count} items in the header is implausible")
            if item_kind not in _SCALARS and item_kind != _STRING:
                raise InvalidGGUFError(f"{path}: unsupported array item type {item_kind}")
            items = [value(item_kind) for _ in range(count)]
            return items if count <= 64 else count
        raise InvalidGGUFError(f"{path}: unknown GGUF value type {kind}")

    if take(4) != _GGUF_MAGIC:
        raise InvalidGGUFError(f"{path} is not a GGUF file (wrong magic)")
    version = scalar(4)
    if version not in (2, 3):
        raise InvalidGGUFError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    _tensor_count, kv_count = scalar(10), scalar(10)
    if kv_count > _MAX_KV:
        raise InvalidGGUFError(f"{path}: {kv_count} header entries is implausible")
    metadata: dict[str, Any] = {"GGUF.version": version}
    for _ in range(kv_count):
        key = string()
        metadata[key] = value(scalar(4))
    return metadata


def shape_from_gguf(metadata: Mapping[str, Any]) -> ModelShape | None:
    """Layers, KV heads and head size from GGUF keys (`{arch}.block_count` …), None if absent."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return None

    def number(key: str) -> int | None:
        found = metadata.get(f"{arch}.{key}")
        if isinstance(found, list):  # per-layer values (some architectures): take the largest
            found = max((x for x in found if isinstance(x, int)), default=None)
        return found if isinstance(found, int) and found > 0 else None

    layers = number("block_count")
    heads = number("attention.head_count")
    if layers is None or heads is None:
        return None
    kv_heads = number("attention.head_count_kv") or heads
    embedding = number("embedding_length")
    key_length = number("attention.key_length")
    value_length = number("attention.value_length")
    if key_length and value_length:
        head_dim = (key_length + value_length) // 2
    elif key_length:
        head_dim = key_length
    elif embedding:
        head_dim = embedding // heads
    else:
        return None
    return ModelShape(
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        source="gguf",
        trained_context=number("context_length"),
    )


# -- free memory ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """Free and total memory of the pool models are loaded into."""

    pool: Literal["gpu", "ram"]
    total_bytes: int
    free_bytes: int
    source: Literal["nvml", "psutil"]
    devices: tuple[str, ...] = ()


def read_free_memory() -> MemorySnapshot:
    """GPU memory from NVML when an NVIDIA driver answers, else available RAM from psutil."""
    gpu = _nvml_snapshot()
    if gpu is not None:
        return gpu
    import psutil

    memory = psutil.virtual_memory()
    return MemorySnapshot(pool="ram", total_bytes=memory.total, free_bytes=memory.available, source="psutil")


def _nvml_snapshot() -> MemorySnapshot | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:  # NVMLError_LibraryNotFound / DriverNotLoaded: no NVIDIA GPU here
        log.debug("vram.nvml_unavailable", error=str(err))
        return None
    try:
        total = free = 0
        names: list[str] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            total += int(info.total)
            free += int(info.free)
            name = pynvml.nvmlDeviceGetName(handle)
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        if not names:
            return None
        return MemorySnapshot(pool="gpu", total_bytes=total, free_bytes=free, source="nvml", devices=tuple(names))
    except pynvml.NVMLError as err:
        log.warning("vram.nvml_failed", error=str(err))
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            log.debug("vram.nvml_shutdown_failed")


# -- the manager ---------------------------------------------------------------------------------


@dataclass(slots=True)
class LoadedState:
    """What we know about one loaded model on one provider."""

    provider: str
    model: str
    memory_bytes: int
    instance_id: str | None = None
    loaded_at: float | None = None
    last_used: float = 0.0
    in_use: int = 0


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """The decision before a load: what it needs, what is free, what must be unloaded first."""

    provider: str
    model: str
    estimate: MemoryEstimate | None
    free_bytes: int
    pool: str
    unload_first: tuple[LoadedState, ...] = ()
    checked: bool = True
    note: str = ""


@dataclass
class ModelMemoryManager:
    """Loads models only when they fit, unloading least-recently-used idle models to make room.

    `providers` are the servers whose loaded models share this machine's memory (local ones); a
    model on a remote provider is loaded without a local check. `budget_bytes` caps the memory all
    models may use together; `reserve_bytes` is kept free for everything else.
    """

    providers: Mapping[str, LLMProvider]
    budget_bytes: int | None = None
    reserve_bytes: int = 512 * MIB
    memory: Callable[[], MemorySnapshot] = read_free_memory
    clock: Callable[[], float] = time.monotonic
    states: dict[tuple[str, str], LoadedState] = field(default_factory=dict)

    def mark_used(self, provider: str, model: str) -> None:
        """Record that a model answered just now (for least-recently-used ordering)."""
        state = self.states.get((provider, model))
        if state is not None:
            state.last_used = self.clock()

    def begin_use(self, provider: str, model: str) -> None:
        """A call on this model started; it is not idle until `end_use`."""
        state = self.states.setdefault((provider, model), LoadedState(provider, model, 0))
        state.in_use += 1
        state.last_used = self.clock()

    def end_use(self, provider: str, model: str) -> None:
        """A call on this model ended."""
        state = self.states.get((provider, model))
        if state is not None:
            state.in_use = max(0, state.in_use - 1)
            state.last_used = self.clock()

    async def refresh(self) -> list[LoadedState]:
        """Re-read which models every local provider has loaded; keeps usage history."""
        seen: set[tuple[str, str]] = set()
        for name, provider in self.providers.items():
            if not provider.is_local:
                continue
            for info in await provider.list_models(refresh=True):
                if not info.loaded:
                    continue
                key = (name, info.key)
                seen.add(key)
                memory = info.vram_bytes or _estimated_total(info)
                state = self.states.get(key)
                if state is None:
                    self.states[key] = LoadedState(
                        name, info.key, memory, instance_id=next(iter(info.instance_ids), None)
                    )
                else:
                    state.memory_bytes = memory
        for key in [k for k, s in self.states.items() if k not in seen and s.in_use == 0]:
            del self.states[key]
        return [state for key, state in self.states.items() if key in seen]

    async def plan(self, provider_name: str, model: str, *, context_length: int | None = None) -> LoadPlan:
        """Whether `model` fits now and what would have to be unloaded; ModelDoesNotFitError if never."""
        provider = self._provider(provider_name)
        info = await provider.model_info(model)
        estimate = estimate_for_model(info, context_length=context_length)
        if not provider.is_local:
            return LoadPlan(provider_name, model, estimate, 0, "remote", checked=False,
                            note="remote server: its memory is not visible from here")  # fmt: skip
        if estimate is None:
            return LoadPlan(provider_name, model, None, 0, "unknown", checked=False,
                            note="the server reports neither file size nor parameter count")  # fmt: skip
        loaded = await self.refresh()
        snapshot = self.memory()
        free = snapshot.free_bytes - self.reserve_bytes
        in_use_total = sum(state.memory_bytes for state in loaded)
        if self.budget_bytes is not None:
            free = min(free, self.budget_bytes - in_use_total)
        need = estimate.total_bytes
        if (provider_name, model) in {(s.provider, s.model) for s in loaded}:
            return LoadPlan(provider_name, model, estimate, free, snapshot.pool, note="already loaded")
        if need <= free:
            return LoadPlan(provider_name, model, estimate, free, snapshot.pool)
        idle = sorted((s for s in loaded if s.in_use == 0), key=lambda s: s.last_used)
        victims: list[LoadedState] = []
        reclaimed = 0
        for state in idle:
            if free + reclaimed >= need:
                break
            victims.append(state)
            reclaimed += state.memory_bytes
        if free + reclaimed >= need:
            return LoadPlan(provider_name, model, estimate, free, snapshot.pool, unload_first=tuple(victims))
        busy = sum(s.memory_bytes for s in loaded if s.in_use > 0)
        pool = "GPU memory" if snapshot.pool == "gpu" else "RAM"
        budget_note = f" (budget {gib(self.budget_bytes)})" if self.budget_bytes is not None else ""
        raise ModelDoesNotFitError(
            f"{model} needs about {estimate.describe()}, but only {gib(max(free, 0))} of {pool} is free"
            f"{budget_note}, {gib(reclaimed)} more after unloading every idle model"
            f"{'' if not busy else f', and busy models hold {gib(busy)}'}",
            hint="choose a smaller quantisation or a shorter context length, or free memory",
        )

    async def load(
        self, provider_name: str, model: str, *, config: LoadConfig | None = None
    ) -> tuple[LoadedInstance | None, LoadPlan]:
        """Check, make room, load; returns the instance (None if already loaded) and the plan."""
        plan = await self.plan(provider_name, model, context_length=config.context_length if config else None)
        if plan.note == "already loaded":
            self.mark_used(provider_name, model)
            return None, plan
        for victim in plan.unload_first:
            log.info("vram.unloading_idle", provider=victim.provider, model=victim.model,
                     frees=gib(victim.memory_bytes), for_model=model)  # fmt: skip
            await self._provider(victim.provider).unload(victim.model)
            self.states.pop((victim.provider, victim.model), None)
        instance = await self._provider(provider_name).load(model, config)
        now = self.clock()
        self.states[(provider_name, model)] = LoadedState(
            provider_name,
            model,
            plan.estimate.total_bytes if plan.estimate else 0,
            instance_id=instance.instance_id,
            loaded_at=now,
            last_used=now,
        )
        return instance, plan

    async def unload(self, provider_name: str, model: str) -> None:
        """Unload a model and forget its state."""
        await self._provider(provider_name).unload(model)
        self.states.pop((provider_name, model), None)

    def _provider(self, name: str) -> LLMProvider:
        try:
            return self.providers[name]
        except KeyError:
            raise ProviderError(f"no provider named {name!r}", hint="see `orchestrator providers list`") from None


def _estimated_total(info: ModelInfo) -> int:
    estimate = estimate_for_model(info)
    return estimate.total_bytes if estimate else 0
