"""The confidence score: a logistic regression over the detectors' severities.

    p(hallucinated) = σ(b + Σ wᵢ·xᵢ),   confidence = round(100 · (1 − p)),   suspect = confidence < threshold

where xᵢ is the highest severity any finding of detector i reached (0 when it found nothing).
Weights, bias and threshold are fitted by `python -m bot.engine.hallucination.fit` on the
labelled set in tests/fixtures/hallucination/labelled.jsonl and shipped as calibration.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.engine.hallucination.types import DETECTORS, Finding
from bot.errors import OrchestratorError

CALIBRATION_PATH = Path(__file__).with_name("calibration.json")
FEATURES: tuple[str, ...] = DETECTORS


class CalibrationError(OrchestratorError):
    """The calibration file is missing or malformed."""


def features(findings: list[Finding]) -> dict[str, float]:
    """Per-detector highest severity: the calibration's inputs."""
    values = dict.fromkeys(FEATURES, 0.0)
    for finding in findings:
        if finding.detector in values:
            values[finding.detector] = max(values[finding.detector], finding.severity)
    return values


@dataclass(frozen=True)
class Calibration:
    """Fitted weights; `metrics` are the held-out numbers it was shipped with."""

    weights: Mapping[str, float]
    bias: float
    threshold: int
    embedder: str = "lexical-hash-512"
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def probability(self, values: Mapping[str, float]) -> float:
        """Probability that the answer is hallucinated."""
        z = self.bias + sum(self.weights.get(name, 0.0) * values.get(name, 0.0) for name in FEATURES)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def confidence(self, values: Mapping[str, float]) -> int:
        """Confidence 0..100 that the answer is faithful."""
        return round(100.0 * (1.0 - self.probability(values)))

    def as_dict(self) -> dict[str, Any]:
        """The JSON shipped in calibration.json."""
        return {"features": list(FEATURES), "weights": {k: self.weights[k] for k in FEATURES}, "bias": self.bias,
                "threshold": self.threshold, "embedder": self.embedder, "metrics": dict(self.metrics)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Parse calibration JSON; CalibrationError says what is wrong."""
        try:
            weights = {str(k): float(v) for k, v in dict(data["weights"]).items()}
            threshold = int(data["threshold"])
            bias = float(data["bias"])
        except (KeyError, TypeError, ValueError) as err:
            raise CalibrationError(f"invalid hallucination calibration: {err!r}",
                                   hint="regenerate it with `python -m bot.engine.hallucination.fit`") from err
        if not 0 <= threshold <= 100:
            raise CalibrationError(f"calibration threshold {threshold} is outside 0..100")
        return cls(weights=weights, bias=bias, threshold=threshold, embedder=str(data.get("embedder", "")),
                   metrics=dict(data.get("metrics", {})))

    @classmethod
    def load(cls, path: Path | None = None) -> Calibration:
        """The shipped calibration (or the one at `path`)."""
        target = path or CALIBRATION_PATH
        try:
            data = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CalibrationError(f"cannot read hallucination calibration {target}: {err}",
                                   hint="regenerate it with `python -m bot.engine.hallucination.fit`") from err
        return cls.from_dict(data)
