"""Drift: an answer very different from the earlier answers to the same question.

Each earlier answer is compared with the new one as the divergence module compares two
answers: embedding similarity through its per-embedder bounds (`semantic_term`) and the
factual conflict (`compare_claims`: opposite yes/no or disjoint numbers weigh 0.85, different
names only 0.3 because paraphrases name different details). The
answer drifts only if it disagrees with *every* earlier answer — agreeing with one of them is
consistency with the conversation.
"""

from __future__ import annotations

from typing import Any

from bot.engine.divergence import compare_claims, semantic_term
from bot.engine.hallucination.types import CheckInput, Finding, clip
from bot.engine.hallucination.vectors import Vectors

MAX_EARLIER = 5


def texts(item: CheckInput) -> list[str]:
    """What this detector embeds."""
    earlier = [a for a in item.earlier_answers[-MAX_EARLIER:] if a.strip()]
    return [item.answer, *earlier] if earlier else []


def detect(item: CheckInput, vectors: Vectors) -> list[Finding]:
    """A finding when the answer disagrees with all earlier answers."""
    earlier = [a for a in item.earlier_answers[-MAX_EARLIER:] if a.strip()]
    if not earlier:
        return []
    best: tuple[float, dict[str, Any]] | None = None
    for previous in earlier:
        similarity = vectors.sim(item.answer, previous)
        semantic = semantic_term(similarity, vectors.name)
        claims = compare_claims(item.answer[:20_000], previous[:20_000])
        severity = clip(max(0.7 * semantic, (0.85 if claims.hard else 0.3) * claims.score))
        evidence: dict[str, Any] = {"earlier_answer": previous[:300], "similarity": round(similarity, 4),
                    "semantic_term": round(semantic, 4), "conflicts": list(claims.conflicts),
                    "embedder": vectors.name}
        if best is None or severity < best[0]:
            best = (severity, evidence)
    assert best is not None
    severity, evidence = best
    if severity < 0.15:
        return []
    conflicts: list[str] = evidence["conflicts"]
    detail = f": {conflicts[0]}" if conflicts else f" (similarity {evidence['similarity']:.2f})"
    return [Finding("drift", severity, f"the answer differs from the earlier answer to this question{detail}",
                    {**evidence, "earlier_count": len(earlier)})]
