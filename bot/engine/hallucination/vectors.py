"""One batched embedding call per check, and cosine similarities with numpy.

Detectors declare the texts they need; the checker embeds them all at once (one model call,
timed separately so `Report.ms` excludes it) and the detectors read similarities from here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from bot.engine.embeddings import Embedder
from bot.engine.hallucination.blas import SERIAL_BELOW, single_thread

MAX_EMBED_CHARS = 2000


class Vectors:
    """Unit vectors for a set of texts, keyed by the text itself."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.model_ms = 0.0
        self._wanted: dict[str, None] = {}
        self._index: dict[str, int] = {}
        self._matrix: npt.NDArray[np.float64] = np.zeros((0, 1))

    @property
    def name(self) -> str:
        """The embedder's name (similarity bounds are per embedder)."""
        return self.embedder.name

    def want(self, texts: Iterable[str]) -> None:
        """Texts some detector will compare."""
        for text in texts:
            self._wanted.setdefault(text[:MAX_EMBED_CHARS], None)

    async def load(self) -> None:
        """Embed every wanted text in one call."""
        texts = [t for t in self._wanted if t not in self._index]
        if not texts:
            return
        started = time.perf_counter()
        rows = await self.embedder.embed_rows(texts)
        self.model_ms += (time.perf_counter() - started) * 1000
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = rows / np.where(norms == 0, 1.0, norms)
        offset = len(self._index)
        self._matrix = rows if offset == 0 else np.vstack([self._matrix, rows])
        for i, text in enumerate(texts):
            self._index[text] = offset + i

    def rows(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """The unit vectors of wanted `texts`, one row each."""
        return self._matrix[[self._index[t[:MAX_EMBED_CHARS]] for t in texts]]

    @staticmethod
    def product(rows: npt.NDArray[np.float64], cols: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Similarity matrix of two `rows()` results."""
        if not len(rows) or not len(cols):
            return np.zeros((len(rows), len(cols)))
        if len(rows) * len(cols) * rows.shape[1] < SERIAL_BELOW:
            return rows @ cols.T
        with single_thread():  # see blas.py: threads only add waiting at these sizes
            return rows @ cols.T

    def sim(self, a: str, b: str) -> float:
        """Cosine similarity of two wanted texts."""
        return float(self.sims([a], [b])[0, 0])

    def sims(self, rows: Sequence[str], cols: Sequence[str]) -> npt.NDArray[np.float64]:
        """Similarity matrix rows × cols."""
        if not rows or not cols:
            return np.zeros((len(rows), len(cols)))
        return self.product(self.rows(rows), self.rows(cols))
