"""Out of scope: the answer does not address the request.

Two measurements of the request (question, and the task context when given) against the
answer: the embedding similarity of the request with the answer's opening and with its best
matching sentence, mapped through per-embedder bounds (below `low` unrelated, above `high`
on topic); and the share of the question's content words the answer uses. A short answer on
topic scores high on the first, an answer about something else low on both.
"""

from __future__ import annotations

import re

from bot.engine.hallucination.text import Parsed, content_stems, stems_of
from bot.engine.hallucination.types import CheckInput, Finding, ramp
from bot.engine.hallucination.vectors import Vectors

# Cosine similarity of a request and an on-topic answer is lower than of two answers.
SCOPE_BOUNDS: dict[str, tuple[float, float]] = {
    "lexical-hash-512": (0.10, 0.32),
    "all-MiniLM-L6-v2": (0.15, 0.50),
}
OPENING_WORDS = 250
_TRANSLATE = re.compile(r"\b(translat\w*|tradu\w*)\b", re.IGNORECASE)
MAX_SENTENCES = 12


def opening(parsed: Parsed) -> str:
    """The first words of the answer (what the reader sees first)."""
    return " ".join(parsed.text.split(maxsplit=OPENING_WORDS)[:OPENING_WORDS])  # no need to split the rest


def texts(item: CheckInput, parsed: Parsed) -> list[str]:
    """What this detector embeds."""
    wanted = [item.question, opening(parsed), *parsed.sentences[:MAX_SENTENCES]]
    if item.context.strip():
        wanted.append(item.context)
    return wanted


def _head_stems(parsed: Parsed, limit: int = 20_000) -> set[str]:
    """Content stems of the first `limit` characters (the shared tokens when the text is shorter)."""
    return stems_of(parsed.text_words) if len(parsed.text) <= limit else content_stems(parsed.text[:limit])


def detect(item: CheckInput, parsed: Parsed, vectors: Vectors) -> list[Finding]:
    """A finding when the answer is far from the request in meaning and words."""
    if not item.question.strip() or _TRANSLATE.search(item.question):
        return []  # a translation is in another language: word and lexical overlap say nothing
    head = opening(parsed)
    sentences = parsed.sentences[:MAX_SENTENCES]
    similarity = vectors.sim(item.question, head)
    best_sentence = float(vectors.sims([item.question], sentences).max()) if sentences else similarity
    context_similarity = vectors.sim(item.context, head) if item.context.strip() else 0.0
    measured = max(similarity, best_sentence, 0.8 * context_similarity)
    low, high = SCOPE_BOUNDS.get(vectors.name, (0.15, 0.45))
    semantic = ramp(measured, high, low)
    asked = content_stems(item.question)
    coverage = len(asked & _head_stems(parsed)) / len(asked) if asked else 1.0
    severity = semantic * (1.0 - 0.6 * coverage)
    if severity < 0.15:
        return []
    return [Finding("scope", severity,
                    f"the answer does not seem to address the request (similarity {measured:.2f}, "
                    f"{coverage:.0%} of the question's key words used)",
                    {"similarity": round(similarity, 4), "best_sentence_similarity": round(best_sentence, 4),
                     "context_similarity": round(context_similarity, 4), "keyword_coverage": round(coverage, 4),
                     "embedder": vectors.name})]
