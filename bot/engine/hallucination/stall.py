"""Stalls: a generation that timed out, froze or was cut at the token limit.

A cut or frozen answer is incomplete however good its first half is, so these findings weigh
heavily. Thresholds are the defaults below (the engine's router has its own first-token
timeout; these only judge what happened).
"""

from __future__ import annotations

from bot.engine.hallucination.types import Finding, StreamStats, ramp

SLOW_FIRST_TOKEN_MS = 30_000.0
FROZEN_GAP_MS = 15_000.0


def detect(stats: StreamStats | None) -> list[Finding]:
    """Stall findings from the stream's timings."""
    if stats is None:
        return []
    findings: list[Finding] = []
    evidence = {"time_to_first_token_ms": stats.time_to_first_token_ms, "longest_gap_ms": stats.longest_gap_ms,
                "total_ms": stats.total_ms, "finished": stats.finished, "finish_reason": stats.finish_reason,
                "timed_out": stats.timed_out, "deltas": stats.deltas}
    if stats.timed_out:
        findings.append(Finding("stall", 0.9, "the generation timed out before it finished", evidence))
    elif not stats.finished:
        findings.append(Finding("stall", 0.85, "the stream stopped before the model finished its answer", evidence))
    if stats.finish_reason == "length":
        findings.append(Finding("stall", 0.75, "the answer was cut off at the token limit", evidence))
    if stats.longest_gap_ms is not None and stats.longest_gap_ms >= FROZEN_GAP_MS:
        severity = 0.3 + 0.4 * ramp(stats.longest_gap_ms, FROZEN_GAP_MS, 4 * FROZEN_GAP_MS)
        findings.append(Finding("stall", severity,
                                f"the stream froze for {stats.longest_gap_ms / 1000:.0f} s between two pieces",
                                evidence))
    if stats.time_to_first_token_ms is not None and stats.time_to_first_token_ms >= SLOW_FIRST_TOKEN_MS:
        severity = 0.2 + 0.3 * ramp(stats.time_to_first_token_ms, SLOW_FIRST_TOKEN_MS, 4 * SLOW_FIRST_TOKEN_MS)
        findings.append(Finding("stall", severity,
                                f"the first token took {stats.time_to_first_token_ms / 1000:.0f} s", evidence))
    return sorted(findings, key=lambda f: -f.severity)


class StreamStatsRecorder:
    """Builds StreamStats from the deltas of a stream as they arrive (times from the caller's clock)."""

    def __init__(self, started_at: float) -> None:
        self._started = started_at
        self._last: float | None = None
        self._first_ms: float | None = None
        self._gap_ms = 0.0
        self._deltas = 0

    def delta(self, at: float) -> None:
        """A piece of text arrived at monotonic time `at` (seconds)."""
        if self._last is None:
            self._first_ms = (at - self._started) * 1000
        else:
            self._gap_ms = max(self._gap_ms, (at - self._last) * 1000)
        self._last = at
        self._deltas += 1

    def stats(self, *, ended_at: float, finished: bool, finish_reason: str | None = None,
              timed_out: bool = False) -> StreamStats:
        """The timings of the whole stream."""
        return StreamStats(time_to_first_token_ms=self._first_ms,
                           longest_gap_ms=self._gap_ms if self._deltas > 1 else None,
                           total_ms=(ended_at - self._started) * 1000, finished=finished,
                           finish_reason=finish_reason, timed_out=timed_out, deltas=self._deltas)
