"""Hallucination detection: detectors, a calibrated confidence 0–100 and a stream guard.

    checker = HallucinationChecker(default_embedder(), judge=LLMClaimJudge(router, "other-model"))
    report = await checker.check(CheckInput(question=..., answer=..., context=..., knowledge=[...]))
    if report.suspect: ...   # report.findings[i].reason is a sentence to show

See docs/hallucination.md for what each detector measures and how the score was fitted.
"""

from bot.engine.hallucination.calibration import Calibration, CalibrationError
from bot.engine.hallucination.checker import HallucinationChecker
from bot.engine.hallucination.judge import LLMClaimJudge
from bot.engine.hallucination.repetition import StreamGuard
from bot.engine.hallucination.stall import StreamStatsRecorder
from bot.engine.hallucination.types import (
    CheckInput,
    ClaimEvidence,
    ClaimJudge,
    Finding,
    PairJudgement,
    Report,
    StreamStats,
    SupportJudgement,
    WebEvidence,
    WebVerifier,
)

__all__ = [
    "Calibration",
    "CalibrationError",
    "CheckInput",
    "ClaimEvidence",
    "ClaimJudge",
    "Finding",
    "HallucinationChecker",
    "LLMClaimJudge",
    "PairJudgement",
    "Report",
    "StreamGuard",
    "StreamStats",
    "StreamStatsRecorder",
    "SupportJudgement",
    "WebEvidence",
    "WebVerifier",
]
