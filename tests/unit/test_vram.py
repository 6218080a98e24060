"""Memory estimates, the GGUF header reader, and where free memory comes from."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bot.engine.providers.port import ModelInfo
from bot.engine.providers.vram import (
    GIB,
    MIB,
    InvalidGGUFError,
    ModelShape,
    estimate_for_model,
    estimate_memory,
    heuristic_shape,
    kv_cache_bytes,
    parse_parameter_count,
    quant_bits,
    read_free_memory,
    read_gguf_metadata,
    shape_from_gguf,
)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, kind: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", kind) + payload


def write_gguf(path: Path, entries: list[bytes], *, version: int = 3) -> Path:
    """A GGUF file header as llama.cpp writes it (magic, version, tensor count, kv count, kvs)."""
    header = b"GGUF" + struct.pack("<I", version) + struct.pack("<Q", 0) + struct.pack("<Q", len(entries))
    path.write_bytes(header + b"".join(entries))
    return path


LLAMA_8B = [
    _kv("general.architecture", 8, _string("llama")),
    _kv("general.name", 8, _string("Llama 3.1 8B")),
    _kv("llama.block_count", 4, struct.pack("<I", 32)),
    _kv("llama.context_length", 4, struct.pack("<I", 131072)),
    _kv("llama.embedding_length", 4, struct.pack("<I", 4096)),
    _kv("llama.attention.head_count", 4, struct.pack("<I", 32)),
    _kv("llama.attention.head_count_kv", 4, struct.pack("<I", 8)),
    _kv("llama.rope.freq_base", 6, struct.pack("<f", 500000.0)),
    _kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + _string("a") + _string("b") + _string("c")),
]


def test_kv_cache_formula_matches_llama_3_8b() -> None:
    shape = ModelShape(layers=32, kv_heads=8, head_dim=128, source="gguf")
    # 2 × 32 layers × 8192 tokens × 8 KV heads × 128 × 2 bytes = exactly 1 GiB
    assert kv_cache_bytes(shape, 8192) == GIB


def test_estimate_adds_weights_kv_and_overhead() -> None:
    estimate = estimate_memory(size_bytes=4_920_000_000, parameters=8e9, quantization="Q4_K_M", context_length=8192)
    assert estimate is not None
    assert estimate.weights_bytes == 4_920_000_000
    assert estimate.kv_cache_bytes == GIB
    assert estimate.overhead_bytes == int(128 * MIB + 0.05 * 4_920_000_000)
    assert estimate.total_bytes == estimate.weights_bytes + estimate.kv_cache_bytes + estimate.overhead_bytes
    assert "KV cache 1.00 GiB (8192 tokens" in estimate.describe()


def test_weights_from_parameters_and_quantisation_when_size_is_unknown() -> None:
    estimate = estimate_memory(size_bytes=None, parameters=7e9, quantization="Q8_0", context_length=2048)
    assert estimate is not None
    assert estimate.weights_bytes == int(7e9 * 8.5 / 8)
    assert estimate.weights_source == "parameters"
    assert estimate_memory(size_bytes=None, parameters=None, quantization=None, context_length=10) is None


def test_longer_context_needs_more_memory() -> None:
    info = ModelInfo(key="m", provider="p", loaded=False, size_bytes=10**9, parameters="1.5B")
    short = estimate_for_model(info, context_length=2048)
    long = estimate_for_model(info, context_length=32768)
    assert short is not None
    assert long is not None
    assert long.kv_cache_bytes == 16 * short.kv_cache_bytes
    assert long.weights_bytes == short.weights_bytes


@pytest.mark.parametrize(
    ("text", "value"),
    [("7B", 7e9), ("135M", 1.35e8), ("1.5B", 1.5e9), ("8x7B", 5.6e10), ("70b", 7e10), ("abc", None), (None, None)],
)
def test_parameter_counts(text: str | None, value: float | None) -> None:
    assert parse_parameter_count(text) == value


@pytest.mark.parametrize(
    ("name", "bits"),
    [("Q4_K_M", 4.85), ("q8_0", 8.5), ("GGUF Q5_K_M", 5.69), ("F16", 16.0), ("Q4_K", 4.5), ("weird", None)],
)
def test_quantisation_bits(name: str, bits: float | None) -> None:
    assert quant_bits(name) == bits


def test_heuristic_shapes_grow_with_size() -> None:
    small, large = heuristic_shape(1.35e8), heuristic_shape(7e10)
    assert (small.layers, small.kv_heads, small.head_dim) == (30, 3, 64)
    assert (large.layers, large.kv_heads, large.head_dim) == (80, 8, 128)
    assert small.source == "heuristic"


def test_gguf_header_gives_the_real_shape(tmp_path: Path) -> None:
    metadata = read_gguf_metadata(write_gguf(tmp_path / "m.gguf", LLAMA_8B))
    assert metadata["general.architecture"] == "llama"
    assert metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    shape = shape_from_gguf(metadata)
    assert shape == ModelShape(layers=32, kv_heads=8, head_dim=128, source="gguf", trained_context=131072)
    info = ModelInfo(key="m", provider="p", loaded=False, size_bytes=4 * GIB)
    estimate = estimate_for_model(info, context_length=8192, gguf_path=tmp_path / "m.gguf")
    assert estimate is not None
    assert estimate.kv_cache_bytes == GIB
    assert estimate.shape.source == "gguf"


@pytest.mark.parametrize(
    "content",
    [
        b"GGML" + b"\0" * 20,  # wrong magic
        b"GGUF" + struct.pack("<I", 3),  # truncated
        b"GGUF" + struct.pack("<I", 9) + b"\0" * 16,  # unknown version
        b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 0) + struct.pack("<Q", 1 << 40),  # absurd kv count
        b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", 0, 1) + struct.pack("<Q", 1 << 40),  # absurd key length
        b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", 0, 1) + _string("k") + struct.pack("<I", 77),  # bad type
    ],
)
def test_hostile_or_broken_gguf_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidGGUFError):
        read_gguf_metadata(path)


def test_free_memory_falls_back_to_psutil_without_an_nvidia_driver() -> None:
    import psutil

    snapshot = read_free_memory()
    if snapshot.source == "nvml":  # a machine with an NVIDIA GPU reports the GPU pool
        assert snapshot.pool == "gpu"
        assert snapshot.devices
        return
    assert snapshot.pool == "ram"
    assert snapshot.total_bytes == psutil.virtual_memory().total
    assert 0 < snapshot.free_bytes <= snapshot.total_bytes
