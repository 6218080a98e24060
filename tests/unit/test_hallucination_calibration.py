"""The shipped calibration reproduces from the fit script and meets the quality goal on held-out data."""

from __future__ import annotations

import json
from collections import Counter

from bot.engine.hallucination.calibration import CALIBRATION_PATH, Calibration
from bot.engine.hallucination.fit import DATASET, auc, best_threshold, fit, load_dataset, precision_recall, split
from bot.engine.hallucination.text import language


def test_labelled_set_is_large_and_covers_every_kind_in_both_languages() -> None:
    rows = [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 150
    labels = Counter(r["label"] for r in rows)
    assert labels["faithful"] >= 60 and labels["hallucinated"] >= 60
    kinds = {r["kind"] for r in rows if r["label"] == "hallucinated"}
    assert kinds == {"repetition", "contradiction", "scope", "temporal", "unsupported", "drift", "stall"}
    assert any("```" in r["answer"] for r in rows) and any("|---" in r["answer"] for r in rows)
    assert sum(language(r["question"] + " " + r["answer"]) == "pt" for r in rows) >= 40
    for row in rows:
        assert {"question", "answer", "context", "reference_answers", "knowledge", "earlier_answers", "now",
                "label", "kind"} <= row.keys()


async def test_shipped_calibration_reproduces_from_the_fit_script() -> None:
    calibration, _ = await fit()
    fresh = json.dumps(calibration.as_dict(), indent=2, sort_keys=True) + "\n"
    assert CALIBRATION_PATH.read_text(encoding="utf-8") == fresh


def test_shipped_calibration_meets_the_goal_on_the_held_out_split() -> None:
    shipped = Calibration.load()
    test = shipped.metrics["test"]
    assert test["auc"] >= 0.90
    assert test["precision"] >= 0.8 and test["recall"] >= 0.7
    assert 0 < shipped.threshold < 100


def test_split_is_stratified_and_fixed() -> None:
    examples = load_dataset()
    train, test = split(examples)
    assert not set(train) & set(test) and len(train) + len(test) == len(examples)
    assert split(examples) == (train, test)
    share = sum(examples[i].hallucinated for i in test) / len(test)
    assert 0.4 <= share <= 0.6


def test_metrics() -> None:
    assert auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert precision_recall([True, True, False, False], [True, False, True, False]) == (0.5, 0.5)
    assert best_threshold([10, 20, 80, 90], [True, True, False, False]) == 21
