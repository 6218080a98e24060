"""Fit the confidence calibration on the labelled set: `python -m bot.engine.hallucination.fit`.

Reproducible: the detectors are deterministic (lexical embedder, no judge), the train/test
split is stratified with a fixed seed, and the logistic regression is plain full-batch
gradient descent with L2 and a fixed number of steps. The threshold is the confidence that
maximises F1 for "hallucinated" on the training split. Prints precision, recall and AUC on
the held-out split and writes calibration.json (`--check` compares instead of writing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bot.engine.embeddings import Embedder, LexicalEmbedder, LocalEmbedder
from bot.engine.hallucination.calibration import CALIBRATION_PATH, FEATURES, Calibration
from bot.engine.hallucination.checker import HallucinationChecker
from bot.engine.hallucination.types import CheckInput, StreamStats

DATASET = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "hallucination" / "labelled.jsonl"
SEED = 20261124
TEST_SHARE = 0.3
STEPS = 20000
LEARNING_RATE = 0.5
L2 = 0.001
# Only the findings are used while fitting; the score they are combined into is what is fitted.
_NEUTRAL = Calibration(weights=dict.fromkeys(FEATURES, 0.0), bias=0.0, threshold=50, embedder="none")


@dataclass(frozen=True)
class Example:
    """One labelled row; `hallucinated` is the positive class."""

    item: CheckInput
    hallucinated: bool
    kind: str
    id: str


def load_dataset(path: Path = DATASET) -> list[Example]:
    """The labelled rows as check inputs."""
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        stats = row.get("stream_stats")
        item = CheckInput(
            question=row["question"], answer=row["answer"], context=row.get("context", ""),
            now=datetime.fromisoformat(row["now"]) if row.get("now") else None,
            earlier_answers=tuple(row.get("earlier_answers", ())),
            reference_answers=tuple(row.get("reference_answers", ())), knowledge=tuple(row.get("knowledge", ())),
            stream_stats=StreamStats(**stats) if stats else None,
        )
        examples.append(Example(item, row["label"] == "hallucinated", row["kind"], str(row.get("id", number))))
    return examples


def split(examples: Sequence[Example], seed: int = SEED) -> tuple[list[int], list[int]]:
    """Stratified train/test indices (same kinds of label in both)."""
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for label in (False, True):
        indices = [i for i, e in enumerate(examples) if e.hallucinated is label]
        rng.shuffle(indices)
        cut = round(len(indices) * TEST_SHARE)
        test.extend(indices[:cut])
        train.extend(indices[cut:])
    return sorted(train), sorted(test)


async def feature_matrix(examples: Sequence[Example], embedder: Embedder) -> npt.NDArray[np.float64]:
    """Detector severities for every example (rows follow `FEATURES`)."""
    checker = HallucinationChecker(embedder, calibration=_NEUTRAL)
    rows = []
    for example in examples:
        report = await checker.check(example.item)
        rows.append([report.features[name] for name in FEATURES])
    return np.asarray(rows, dtype=np.float64)


def logistic(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float]:
    """Weights and bias by gradient descent on the L2-regularised log loss."""
    weights = np.zeros(x.shape[1])
    bias = 0.0
    for _ in range(STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
        error = p - y
        weights -= LEARNING_RATE * (x.T @ error / len(y) + L2 * weights)
        bias -= LEARNING_RATE * float(error.mean())
    return weights, bias


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (probability a hallucinated answer scores above a faithful one)."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def precision_recall(suspect: Sequence[bool], labels: Sequence[bool]) -> tuple[float, float]:
    """Precision and recall of flagging hallucinated answers."""
    tp = sum(s and y for s, y in zip(suspect, labels, strict=True))
    fp = sum(s and not y for s, y in zip(suspect, labels, strict=True))
    fn = sum(y and not s for s, y in zip(suspect, labels, strict=True))
    return (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)


def best_threshold(confidences: Sequence[int], labels: Sequence[bool]) -> int:
    """The confidence threshold with the best F1 on these rows (ties: the lowest threshold)."""
    best = (-1.0, 50)
    for threshold in range(1, 100):
        precision, recall = precision_recall([c < threshold for c in confidences], labels)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if f1 > best[0] + 1e-12:
            best = (f1, threshold)
    return best[1]


def metrics(calibration: Calibration, x: npt.NDArray[np.float64], labels: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and AUC of `calibration` on rows `x`."""
    values = [dict(zip(FEATURES, row, strict=True)) for row in x.tolist()]
    probabilities = [calibration.probability(v) for v in values]
    confidences = [calibration.confidence(v) for v in values]
    precision, recall = precision_recall([c < calibration.threshold for c in confidences], labels)
    return {"precision": round(precision, 4), "recall": round(recall, 4),
            "auc": round(auc(probabilities, labels), 4), "n": len(labels)}


async def fit(embedder: Embedder | None = None, path: Path = DATASET) -> tuple[Calibration, dict[str, Any]]:
    """Fit on the training split; the held-out metrics go into the calibration."""
    chosen = embedder or LexicalEmbedder()
    examples = load_dataset(path)
    x = await feature_matrix(examples, chosen)
    y = np.asarray([e.hallucinated for e in examples], dtype=np.float64)
    train, test = split(examples)
    weights, bias = logistic(x[train], y[train])
    draft = Calibration(weights={n: round(float(w), 4) for n, w in zip(FEATURES, weights, strict=True)},
                        bias=round(bias, 4), threshold=50, embedder=chosen.name)
    train_labels = [bool(v) for v in y[train]]
    confidences = [draft.confidence(dict(zip(FEATURES, row, strict=True))) for row in x[train].tolist()]
    threshold = best_threshold(confidences, train_labels)
    calibration = Calibration(weights=draft.weights, bias=draft.bias, threshold=threshold, embedder=chosen.name)
    held_out = metrics(calibration, x[test], [bool(v) for v in y[test]])
    trained = metrics(calibration, x[train], train_labels)
    result = Calibration(weights=calibration.weights, bias=calibration.bias, threshold=threshold,
                         embedder=chosen.name, metrics={"test": held_out, "train": trained, "seed": SEED,
                                                        "rows": len(examples)})
    return result, {"test": held_out, "train": trained}


def main(argv: list[str] | None = None) -> None:
    """Fit, print the held-out metrics, write (or with --check compare) calibration.json."""
    parser = argparse.ArgumentParser(prog="python -m bot.engine.hallucination.fit", description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", choices=("lexical", "minilm"), default="lexical")
    parser.add_argument("--check", action="store_true", help="compare with the shipped calibration, do not write")
    parser.add_argument("--output", type=Path, default=CALIBRATION_PATH)
    args = parser.parse_args(argv)
    embedder: Embedder = LocalEmbedder() if args.embedder == "minilm" else LexicalEmbedder()
    calibration, measured = asyncio.run(fit(embedder))
    text = json.dumps(calibration.as_dict(), indent=2, sort_keys=True) + "\n"
    for split_name, values in measured.items():
        print(f"{split_name}: precision {values['precision']:.3f} recall {values['recall']:.3f} "
              f"AUC {values['auc']:.3f} (n={values['n']})")
    if args.check:
        same = args.output.exists() and args.output.read_text(encoding="utf-8") == text
        print("calibration.json is up to date" if same else "calibration.json differs from a fresh fit")
        sys.exit(0 if same else 1)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
