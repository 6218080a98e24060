"""Runs every detector on one answer and turns their findings into the calibrated confidence.

All embeddings of a check are computed in one batched call; the time spent in the embedder,
the judge and the web verifier is measured and left out of `Report.ms`, which is the cost of
the checker itself. Nothing here raises on bad input: empty, enormous, code-only or foreign
answers get a score and a note saying what could not be checked.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from bot.engine.embeddings import Embedder
from bot.engine.hallucination import contradiction, drift, repetition, scope, stall, temporal, unsupported
from bot.engine.hallucination.calibration import Calibration, features
from bot.engine.hallucination.text import MAX_ANALYSED_CHARS, parse
from bot.engine.hallucination.types import (
    CheckInput,
    ClaimEvidence,
    ClaimJudge,
    Finding,
    PairJudgement,
    Report,
    SupportJudgement,
    WebEvidence,
    WebVerifier,
)
from bot.engine.hallucination.vectors import Vectors
from bot.logs import get_logger

log = get_logger(__name__)


class _Timer:
    def __init__(self) -> None:
        self.ms = 0.0


class _TimedJudge:
    """Passes calls through to the judge and adds their duration to a timer."""

    def __init__(self, judge: ClaimJudge, timer: _Timer) -> None:
        self.name = getattr(judge, "name", type(judge).__name__)
        self._judge = judge
        self._timer = timer

    async def judge_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[PairJudgement]:
        started = time.perf_counter()
        try:
            return await self._judge.judge_pairs(pairs)
        finally:
            self._timer.ms += (time.perf_counter() - started) * 1000

    async def judge_support(self, items: Sequence[ClaimEvidence]) -> list[SupportJudgement]:
        started = time.perf_counter()
        try:
            return await self._judge.judge_support(items)
        finally:
            self._timer.ms += (time.perf_counter() - started) * 1000


class _TimedWeb:
    def __init__(self, web: WebVerifier, timer: _Timer) -> None:
        self._web = web
        self._timer = timer

    async def verify(self, claim: str) -> WebEvidence:
        started = time.perf_counter()
        try:
            return await self._web.verify(claim)
        finally:
            self._timer.ms += (time.perf_counter() - started) * 1000


class HallucinationChecker:
    """Scores answers; share one per process (it keeps no per-answer state)."""

    def __init__(self, embedder: Embedder, *, judge: ClaimJudge | None = None,
                 calibration: Calibration | None = None, web_verifier: WebVerifier | None = None) -> None:
        self.embedder = embedder
        self.judge = judge
        self.calibration = calibration or Calibration.load()
        self.web_verifier = web_verifier

    async def findings(self, item: CheckInput, notes: list[str], timer: _Timer) -> list[Finding]:
        """Every detector's findings (the calibration is applied by `check`)."""
        found: list[Finding] = list(stall.detect(item.stream_stats))
        if not item.answer.strip():
            found.append(Finding("scope", 1.0, "the answer is empty", {"chars": len(item.answer)}))
            return found
        parsed = parse(item.answer)
        if parsed.truncated:
            notes.append(f"the answer has {len(item.answer):,} characters; only the first "
                         f"{MAX_ANALYSED_CHARS:,} were analysed")
        if not parsed.text_words:  # parsed.text is the answer's first MAX_ANALYSED_CHARS
            found.append(Finding("scope", 0.9, "the answer contains no words", {"chars": len(item.answer)}))
            return found
        if not parsed.sentences:
            notes.append("the answer has no prose (only code or a table): claims were not extracted")
        judge = _TimedJudge(self.judge, timer) if self.judge is not None else None
        web = _TimedWeb(self.web_verifier, timer) if self.web_verifier is not None else None
        if judge is None:
            notes.append("no claim judge: contradictions and support were checked by heuristics only")
        sources = unsupported.sources(item)  # split once, shared by texts() and detect()
        vectors = Vectors(self.embedder)
        vectors.want(scope.texts(item, parsed))
        vectors.want(drift.texts(item))
        vectors.want(unsupported.texts(item, parsed, sources))
        await vectors.load()
        timer.ms += vectors.model_ms
        found.extend(repetition.detect(parsed))
        found.extend(await contradiction.detect(parsed, judge, notes))
        found.extend(scope.detect(item, parsed, vectors))
        found.extend(temporal.detect(parsed, item.now or datetime.now(UTC)))
        found.extend(await unsupported.detect(item, parsed, vectors, judge, web, notes, sources))
        found.extend(drift.detect(item, vectors))
        return found

    async def check(self, item: CheckInput) -> Report:
        """Score one answer."""
        started = time.perf_counter()
        notes: list[str] = []
        timer = _Timer()
        found = await self.findings(item, notes, timer)
        values = features(found)
        confidence = self.calibration.confidence(values)
        if any(f.reason in ("the answer is empty", "the answer contains no words") for f in found):
            confidence = 0
        found.sort(key=lambda f: -f.severity)
        ms = max(0.0, (time.perf_counter() - started) * 1000 - timer.ms)
        report = Report(confidence=confidence, suspect=confidence < self.calibration.threshold, findings=found,
                        ms=ms, features=values, notes=notes, threshold=self.calibration.threshold)
        if report.suspect:
            log.debug("suspect answer", confidence=confidence, findings=[f.reason for f in found[:3]])
        return report
