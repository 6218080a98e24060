"""Divergence 0–100 % between an executor's answer and a different model's view of the task.

The validator's self-reported score alone is not trusted: small local models approve almost
anything. The number is a documented function of three measured terms (docs/divergence.md):

    divergence = 100 × (0.40·v + 0.35·s + 0.25·c),   floored at 50 on a hard factual conflict

- v, verdict term: 1 − score/100, pulled to ≥ 0.70 by "reject", ≥ 0.35 by "revise", ≤ 0.50
  by "approve" (a decision and a score that disagree meet halfway).
- s, semantic term: how far the executor's answer is from the validator's *independent* answer
  (written before it saw the executor's), from the cosine similarity of sentence embeddings:
  ((high − sim) / (high − low))², clipped to [0, 1], with bounds calibrated per embedder. The
  square keeps paraphrases of different length (similarity 0.5–0.6) from reading as conflict.
- c, claim term: the strongest factual conflict between the two answers — opposite yes/no
  polarity (1.0); for numbers (digits and number words, percentages as fractions) one minus
  the share of the shorter answer's numbers the other also states; for names (capitalised
  words), when each answer names something the other does not, their Jaccard distance, halved
  for answers longer than 40 words. Opposite polarity or disjoint numbers are "hard".

Weights and bounds were fitted on tests/fixtures/divergence/pairs.jsonl (agreeing and
disagreeing answer pairs, English and Portuguese) so that 20 % — the default tie-break
threshold — separates them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from bot.engine.embeddings import Embedder, cosine, default_embedder

Decision = Literal["approve", "revise", "reject"]

WEIGHT_VERDICT = 0.40
WEIGHT_SEMANTIC = 0.35
WEIGHT_CLAIMS = 0.25
HARD_CONFLICT_FLOOR = 50.0
# Cosine similarity bounds per embedder: at or above `high` the answers say the same thing,
# at or below `low` they are unrelated.
SIMILARITY_BOUNDS: dict[str, tuple[float, float]] = {
    "all-MiniLM-L6-v2": (0.35, 0.85),
    "lexical-hash-512": (0.20, 0.75),
}

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:\s?%)?")
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "hundred": 100, "thousand": 1000,
    "um": 1, "dois": 2, "duas": 2, "três": 3, "tres": 3, "quatro": 4, "cinco": 5, "seis": 6, "sete": 7,
    "oito": 8, "nove": 9, "dez": 10, "onze": 11, "doze": 12, "vinte": 20, "cem": 100, "mil": 1000,
}
_WORDS = re.compile(r"[\wÀ-ÿ]+")
LONG_ANSWER_WORDS = 40
_ENTITY = re.compile(r"\b[A-ZÀ-Ý][\wÀ-ÿ'-]+(?:\s+[A-ZÀ-Ý][\wÀ-ÿ'-]+)*")
_FIRST_WORD = re.compile(r"^\W*(\w+)", re.UNICODE)
_YES = {"yes", "sim", "true", "correct", "correto", "verdadeiro", "yep"}
_NO = {"no", "não", "nao", "false", "incorrect", "incorreto", "falso", "nope"}
_NOT_ENTITIES = {
    "The", "A", "An", "It", "This", "That", "These", "Those", "In", "On", "At", "For", "To", "If",
    "When", "Yes", "No", "I", "We", "You", "They", "He", "She", "Its", "Our", "As", "But", "And",
    "Or", "So", "Then", "There", "Here", "However", "Also", "First", "Second", "Finally", "Note",
    "O", "Os", "Um", "Uma", "Em", "Na", "Sim", "Não", "Isso", "Este", "Esta", "Para",
    "Com", "Por", "Se", "Quando", "Também", "Mas", "E", "Ou", "De", "Do", "Da", "Nos", "Nas",
}


@dataclass(frozen=True, slots=True)
class ClaimComparison:
    """The factual overlap between two answers."""

    score: float
    hard: bool
    conflicts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Divergence:
    """The divergence and every term it was computed from (stored with the verdict)."""

    pct: float
    verdict_term: float
    semantic_term: float
    claim_term: float
    similarity: float
    embedder: str
    hard_conflict: bool
    conflicts: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for `subtasks.validation` and execution logs."""
        return {
            "pct": round(self.pct, 2),
            "verdict_term": round(self.verdict_term, 4),
            "semantic_term": round(self.semantic_term, 4),
            "claim_term": round(self.claim_term, 4),
            "similarity": round(self.similarity, 4),
            "embedder": self.embedder,
            "hard_conflict": self.hard_conflict,
            "conflicts": list(self.conflicts),
        }


def verdict_term(score: float, decision: Decision) -> float:
    """How much the validator's verdict says the answer is wrong, 0..1."""
    term = 1.0 - max(0.0, min(100.0, score)) / 100.0
    if decision == "reject":
        term = max(term, 0.70)
    elif decision == "revise":
        term = max(term, 0.35)
    else:
        term = min(term, 0.50)
    return term


def semantic_term(similarity: float, embedder: str) -> float:
    """Map a cosine similarity to a 0..1 distance with the embedder's calibrated bounds."""
    low, high = SIMILARITY_BOUNDS.get(embedder, (0.2, 0.8))
    if similarity >= high:
        return 0.0
    if similarity <= low:
        return 1.0
    return ((high - similarity) / (high - low)) ** 2


def _numbers(text: str) -> set[str]:
    found: set[str] = set()
    for raw in _NUMBER.findall(text):
        value = raw.replace(" ", "")
        percent = value.endswith("%")
        value = value.rstrip("%")
        # 1,000 and 1.000 are thousands when followed by exactly three digits; else a decimal mark.
        if re.fullmatch(r"[-+]?\d{1,3}([.,]\d{3})+", value):
            value = re.sub(r"[.,]", "", value)
        else:
            value = value.replace(",", ".")
        try:
            number = float(value)
        except ValueError:
            continue
        found.add(f"{number / 100 if percent else number:g}")
    found.update(f"{_NUMBER_WORDS[w]:g}" for w in _WORDS.findall(text.lower()) if w in _NUMBER_WORDS)
    return found


def _entities(text: str) -> set[str]:
    entities: set[str] = set()
    for match in _ENTITY.findall(text):
        words = [w.removesuffix("'s").removesuffix("’s") for w in match.split() if w not in _NOT_ENTITIES]
        if words:
            entities.add(" ".join(words).lower())
    return entities


def _polarity(text: str) -> str | None:
    match = _FIRST_WORD.match(text.strip().lower())
    if match is None:
        return None
    word = match.group(1)
    return "yes" if word in _YES else "no" if word in _NO else None


def _jaccard_distance(a: set[str], b: set[str]) -> float:
    union = a | b
    return 0.0 if not union else 1.0 - len(a & b) / len(union)


def compare_claims(answer: str, reference: str) -> ClaimComparison:
    """The strongest factual conflict between two answers (polarity, numbers, entities)."""
    conflicts: list[str] = []
    polarity_a, polarity_b = _polarity(answer), _polarity(reference)
    if polarity_a and polarity_b and polarity_a != polarity_b:
        conflicts.append(f"one answer says {polarity_a}, the other {polarity_b}")
        return ClaimComparison(1.0, True, tuple(conflicts))
    numbers_a, numbers_b = _numbers(answer), _numbers(reference)
    number_distance = 0.0
    hard = False
    if numbers_a and numbers_b:
        number_distance = 1.0 - len(numbers_a & numbers_b) / min(len(numbers_a), len(numbers_b))
        if not numbers_a & numbers_b:
            hard = True
            conflicts.append(
                f"numbers differ: {', '.join(sorted(numbers_a)[:5])} vs {', '.join(sorted(numbers_b)[:5])}"
            )
    entities_a, entities_b = _entities(answer), _entities(reference)
    entity_distance = 0.0
    only_a, only_b = entities_a - entities_b, entities_b - entities_a
    if only_a and only_b:
        long_answer = max(len(answer.split()), len(reference.split())) > LONG_ANSWER_WORDS
        entity_distance = _jaccard_distance(entities_a, entities_b) * (0.5 if long_answer else 1.0)
        conflicts.append(f"names differ: {', '.join(sorted(only_a)[:3])} vs {', '.join(sorted(only_b)[:3])}")
    return ClaimComparison(max(number_distance, entity_distance), hard, tuple(conflicts))


def combine(
    *, verdict: float, semantic: float, claims: ClaimComparison, similarity: float, embedder: str
) -> Divergence:
    """Apply the documented formula to already measured terms."""
    pct = 100.0 * (WEIGHT_VERDICT * verdict + WEIGHT_SEMANTIC * semantic + WEIGHT_CLAIMS * claims.score)
    if claims.hard:
        pct = max(pct, HARD_CONFLICT_FLOOR)
    return Divergence(
        pct=max(0.0, min(100.0, pct)),
        verdict_term=verdict,
        semantic_term=semantic,
        claim_term=claims.score,
        similarity=similarity,
        embedder=embedder,
        hard_conflict=claims.hard,
        conflicts=claims.conflicts,
    )


async def measure_divergence(
    *,
    answer: str,
    reference: str | None,
    score: float,
    decision: Decision,
    embedder: Embedder | None = None,
) -> Divergence:
    """Divergence between `answer` and the validator's verdict and independent `reference`.

    Without a reference answer (the validator gave none) only the verdict term is measured and
    the other two count as full agreement — the result is then the verdict alone, and says so
    through `embedder="none"`.
    """
    verdict = verdict_term(score, decision)
    if not reference or not reference.strip() or not answer.strip():
        return combine(verdict=verdict, semantic=0.0, claims=ClaimComparison(0.0, False), similarity=1.0,
                       embedder="none")
    chosen = embedder or default_embedder()
    vectors = await chosen.embed_rows([answer, reference])
    similarity = cosine(vectors[0], vectors[1])
    return combine(
        verdict=verdict,
        semantic=semantic_term(similarity, chosen.name),
        claims=compare_claims(answer, reference),
        similarity=similarity,
        embedder=chosen.name,
    )
