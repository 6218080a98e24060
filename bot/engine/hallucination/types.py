"""The values the hallucination checker takes and returns, and the hooks it calls out through.

They are plain frozen dataclasses so the engine can store a report as JSON (`Report.as_dict`)
and show a finding's `reason` in chat without knowing which detector produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

Detector = Literal["repetition", "contradiction", "scope", "temporal", "unsupported", "drift", "stall"]
DETECTORS: tuple[Detector, ...] = ("repetition", "contradiction", "scope", "temporal", "unsupported", "drift", "stall")


@dataclass(frozen=True)
class Finding:
    """One problem found; `evidence` is JSON-serialisable so it can be stored and shown."""

    detector: str
    severity: float
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"detector": self.detector, "severity": round(self.severity, 4), "reason": self.reason,
                "evidence": self.evidence}


@dataclass(frozen=True)
class StreamStats:
    """How a generation streamed: what the stall detector judges (times in milliseconds)."""

    time_to_first_token_ms: float | None = None
    longest_gap_ms: float | None = None
    total_ms: float | None = None
    finished: bool = True
    finish_reason: str | None = None
    timed_out: bool = False
    deltas: int = 0


@dataclass(frozen=True)
class CheckInput:
    """One answer to check and everything it can be checked against."""

    question: str
    answer: str
    context: str = ""
    now: datetime | None = None
    earlier_answers: Sequence[str] = ()
    reference_answers: Sequence[str] = ()
    knowledge: Sequence[str] = ()
    stream_stats: StreamStats | None = None


@dataclass(frozen=True)
class Report:
    """The calibrated confidence that the answer is faithful and the findings behind it.

    `features` are the per-detector severities the calibration combined; `notes` say what could
    not be checked (no judge, judge failed, input capped) so a low-evidence score is visible.
    """

    confidence: int
    suspect: bool
    findings: list[Finding]
    ms: float
    features: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    threshold: int = 50

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for execution logs and the API."""
        return {"confidence": self.confidence, "suspect": self.suspect, "threshold": self.threshold,
                "findings": [f.as_dict() for f in self.findings], "ms": round(self.ms, 2),
                "features": {k: round(v, 4) for k, v in self.features.items()}, "notes": list(self.notes)}


PairLabel = Literal["contradiction", "consistent", "unrelated"]
SupportLabel = Literal["supported", "contradicted", "not_enough_info"]


@dataclass(frozen=True)
class PairJudgement:
    """A judge's view of whether two claims from one answer contradict each other."""

    label: PairLabel
    confidence: float
    reason: str = ""


@dataclass(frozen=True)
class ClaimEvidence:
    """A claim and the passages it should be judged against."""

    claim: str
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class SupportJudgement:
    """A judge's view of whether the evidence supports a claim."""

    label: SupportLabel
    confidence: float
    reason: str = ""


class ClaimJudge(Protocol):
    """A *different* model that judges claims; the engine implements it through the router.

    Both methods return one judgement per input, in order.
    """

    name: str

    async def judge_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[PairJudgement]:
        """Whether each pair of claims contradicts itself."""
        ...

    async def judge_support(self, items: Sequence[ClaimEvidence]) -> list[SupportJudgement]:
        """Whether each claim is supported by its evidence."""
        ...


WebVerdict = Literal["supported", "contradicted", "not_found"]


@dataclass(frozen=True)
class WebEvidence:
    """What a web search found about one claim."""

    verdict: WebVerdict
    sources: tuple[str, ...] = ()
    snippet: str = ""


class WebVerifier(Protocol):
    """Looks a claim up on the web (the browser capability implements it)."""

    async def verify(self, claim: str) -> WebEvidence:
        """Evidence for or against `claim`."""
        ...


def clip(value: float, low: float = 0.0, high: float = 1.0) -> float:
    """`value` limited to [low, high]."""
    return max(low, min(high, value))


def ramp(value: float, start: float, end: float) -> float:
    """0 at or below `start`, 1 at or above `end`, linear between (works when start > end too)."""
    if start == end:
        return 1.0 if value >= end else 0.0
    return clip((value - start) / (end - start))
