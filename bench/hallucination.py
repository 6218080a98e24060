"""Hallucination checker: precision, recall and AUC on the held-out split, and the cost of one check.

    python -m bench.hallucination [--embedder lexical|minilm] [--checks N] [--json]

Quality is measured with the shipped calibration on the test split of
tests/fixtures/hallucination/labelled.jsonl (the split `bot.engine.hallucination.fit` holds
out). Speed is the time per check of a 1,000-word answer (prose, a code block and a table,
with knowledge passages, two reference answers and an earlier answer), excluding model calls
(`Report.ms`, wall-clock `perf_counter` time minus the embedder/judge/web calls); the wall time
including the embedder is reported too. After `WARM_UP` checks (regex and stem caches, the BLAS
handle) `--checks` checks are timed — 500 by default so the p99 is the 5th-worst check, not the
2nd. Nothing is cached across checks for the answer itself. The garbage collector stays on (the
daemon does not freeze its heap either); the collections that ran during the timed checks, and
their total pause, are reported as `gc_collections` / `gc_ms` because a full collection of the
whole process heap can land inside any one check. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bot.engine.embeddings import Embedder, LexicalEmbedder, LocalEmbedder
from bot.engine.hallucination import CheckInput, HallucinationChecker
from bot.engine.hallucination.fit import auc, load_dataset, precision_recall, split

WARM_UP = 5


def _long_answer(words: int = 1000) -> CheckInput:
    """A realistic long answer built from the labelled set's faithful prose plus code and a table."""
    rows = [e for e in load_dataset() if not e.hallucinated]
    prose = [e.item.answer for e in rows if "```" not in e.item.answer and "|" not in e.item.answer]
    parts: list[str] = []
    count = 0
    index = 0
    while count < words - 80:
        text = prose[index % len(prose)]
        parts.append(text if index < len(prose) else f"In other words (part {index // len(prose)}): {text}")
        count += len(text.split())
        index += 1
    parts.insert(len(parts) // 2, "```python\ndef merge(a, b):\n    out = []\n    while a and b:\n"
                                  "        out.append(a.pop(0) if a[0] <= b[0] else b.pop(0))\n"
                                  "    return out + a + b\n```")
    parts.insert(len(parts) // 3, "| Country | Area (million km²) |\n|---|---|\n| Russia | 17.1 |\n| Canada | 9.98 |")
    knowledge = [k for e in rows for k in e.item.knowledge][:12]
    references = [" ".join(e.item.answer for e in rows[i::3][:15]) for i in range(2)]
    return CheckInput(question="Summarise what we know about these topics.", answer="\n\n".join(parts),
                      context="A long research summary.", knowledge=knowledge, reference_answers=references,
                      earlier_answers=[" ".join(prose[:10])], now=datetime(2026, 11, 24, tzinfo=UTC))


async def _quality(checker: HallucinationChecker) -> dict[str, Any]:
    examples = load_dataset()
    _, test = split(examples)
    probabilities, suspects, labels = [], [], []
    for index in test:
        example = examples[index]
        report = await checker.check(example.item)
        probabilities.append(1 - report.confidence / 100)
        suspects.append(report.suspect)
        labels.append(example.hallucinated)
    precision, recall = precision_recall(suspects, labels)
    return {"precision": round(precision, 4), "recall": round(recall, 4), "auc": round(auc(probabilities, labels), 4),
            "test_rows": len(test)}


class _GcPauses:
    """Counts the garbage collections (per generation) and their total pause while installed."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.ms = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.counts[info["generation"]] += 1
            self.ms += (time.perf_counter() - self._started) * 1000


async def _speed(checker: HallucinationChecker, checks: int) -> dict[str, Any]:
    item = _long_answer()
    for _ in range(WARM_UP):  # lazy model load, regex and stem caches
        await checker.check(item)
    own, wall = [], []
    pauses = _GcPauses()
    gc.callbacks.append(pauses)
    try:
        for _ in range(checks):
            started = time.perf_counter()
            report = await checker.check(item)
            wall.append((time.perf_counter() - started) * 1000)
            own.append(report.ms)
    finally:
        gc.callbacks.remove(pauses)
    own.sort()
    return {"ms_per_check_mean": round(statistics.fmean(own), 2),
            "ms_per_check_p50": round(own[len(own) // 2], 2),
            "ms_per_check_p99": round(own[min(len(own) - 1, int(len(own) * 0.99))], 2),
            "wall_ms_per_check_mean": round(statistics.fmean(wall), 2), "answer_words": len(item.answer.split()),
            "checks": checks, "gc_collections": pauses.counts, "gc_ms": round(pauses.ms, 1),
            "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


async def _huge(checker: HallucinationChecker) -> float:
    """Wall time of one check of a 100,000-word runaway answer (must stay bounded)."""
    item = CheckInput(question="Explain caching.", answer="Caching keeps recent results close to the reader. " * 14_300)
    started = time.perf_counter()
    await checker.check(item)
    return round((time.perf_counter() - started) * 1000, 1)


async def _run(embedder: Embedder, checks: int) -> dict[str, Any]:
    checker = HallucinationChecker(embedder)
    result: dict[str, Any] = {"embedder": embedder.name}
    result.update(await _quality(checker))
    result.update(await _speed(checker, checks))
    result["ms_100k_words"] = await _huge(checker)
    return result


def main(argv: list[str] | None = None) -> None:
    """Print the measurements; the last line is the JSON the README quotes."""
    parser = argparse.ArgumentParser(prog="python -m bench.hallucination", description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", choices=("lexical", "minilm"), default="lexical")
    parser.add_argument("--checks", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    embedder: Embedder = LocalEmbedder() if args.embedder == "minilm" else LexicalEmbedder()
    result = asyncio.run(_run(embedder, args.checks))
    if not args.json:
        print(f"{result['embedder']}: AUC {result['auc']}, precision {result['precision']}, recall "
              f"{result['recall']}; {result['ms_per_check_mean']} ms mean, {result['ms_per_check_p99']} ms p99 "
              f"per {result['answer_words']}-word answer (load average {result['load_average']})", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
