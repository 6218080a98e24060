"""Unverifiable or invented facts: each claim checked against knowledge and other models' answers.

Claims are the answer's prose sentences and table rows. Each is compared with two kinds of
source, separately: the knowledge passages (one source) and each reference answer written
independently by another model (cross-model SelfCheck: a fact no other model states is
suspect). Against one source a claim is

- *supported* when the source's closest sentences (by embedding) contain most of its content
  words and its key facts (numbers and names);
- *contradicted* when the closest sentence talks about the same thing (shared content words)
  but the source states other numbers, or (reference answers only, since they answer the same
  question) the claim's name is absent where the reference names someone else;
- *unsupported* otherwise.

A claim contradicted by the knowledge, or by more reference answers than support it, is
contradicted; otherwise
one supported by any source is supported. With a `ClaimJudge` the doubtful claims (at most 6) and their
closest passages go to it; with a `WebVerifier` the still doubtful ones (at most 3) are looked
up. Severity: 0.6 + 0.4 × share contradicted when any claim is contradicted, else 0.45 × share
unsupported (claims without numbers or names count half: they are rarely the invented part).
Every claim's status and evidence is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bot.engine.hallucination.text import (
    Parsed,
    content_stems,
    entities,
    frozen,
    numbers,
    numbers_in,
    split_sentences,
    table_cells,
)
from bot.engine.hallucination.types import CheckInput, ClaimEvidence, ClaimJudge, Finding, WebVerifier, clip
from bot.engine.hallucination.vectors import Vectors

MAX_SOURCE_SENTENCES = 200
MAX_REFERENCES = 5
MAX_JUDGED = 6
MAX_WEB = 3
TOP_K = 3


@dataclass
class ClaimStatus:
    """What is known about one claim."""

    claim: str
    status: str = "unchecked"
    by_source: dict[str, str] = field(default_factory=dict)
    closest: dict[str, str] = field(default_factory=dict)
    method: str = "lexical"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready evidence."""
        return {"claim": self.claim[:300], "status": self.status, "sources": self.by_source,
                "closest": {k: v[:300] for k, v in self.closest.items()}, "method": self.method}


def sources(item: CheckInput) -> dict[str, list[str]]:
    """Sentences of each source: 'knowledge' and 'reference_1'…"""
    found: dict[str, list[str]] = {}
    knowledge = [s for passage in item.knowledge for s in split_sentences(passage)]
    if knowledge:
        found["knowledge"] = knowledge[:MAX_SOURCE_SENTENCES]
    for i, reference in enumerate(item.reference_answers[:MAX_REFERENCES], start=1):
        parsed = split_sentences(reference)
        if parsed:
            found[f"reference_{i}"] = parsed[:MAX_SOURCE_SENTENCES]
    return found


def claims(parsed: Parsed) -> list[str]:
    """The claims checked: prose claims and table rows."""
    return [*parsed.claims, *table_cells(parsed.table_rows)[:20]]


def _claim_facts(parsed: Parsed) -> list[tuple[str, _Facts]]:
    """`claims` with their facts (prose claims reuse the parse's stems and numbers)."""
    prose = [(claim, _Facts.of(claim, stems=stems, found_numbers=found)) for (claim, _), stems, found
             in zip(parsed.claim_words, parsed.claim_stems, parsed.claim_numbers, strict=True)]
    return [*prose, *((cell, _Facts.of(cell)) for cell in table_cells(parsed.table_rows)[:20])]


def texts(item: CheckInput, parsed: Parsed, found: dict[str, list[str]] | None = None) -> list[str]:
    """What this detector embeds (`found`: `sources(item)` when the caller already has it)."""
    found = sources(item) if found is None else found
    if not found:
        return []
    return [*claims(parsed), *(s for sentences in found.values() for s in sentences)]


@dataclass(frozen=True, slots=True)
class _Facts:
    """The parts of a text the support check compares, computed once per text."""

    stems: frozenset[str]
    numbers: frozenset[str]
    names: frozenset[str]

    @classmethod
    def of(cls, text: str, *, stems: set[str] | None = None, found_numbers: frozenset[str] | None = None) -> _Facts:
        """The facts of a claim (`stems`, `found_numbers`: already computed by the parse)."""
        return cls(frozen(content_stems(text) if stems is None else stems),
                   frozen(numbers(text)) if found_numbers is None else found_numbers, frozen(entities(text)))


class _Source:
    """One source's sentences, the whole source's numbers and text, and each sentence's facts.

    A sentence's stems are computed the first time it is among a claim's closest sentences, its
    numbers and names only when it is the closest and the verdict needs them: most sentences of
    a long source are never looked at.
    """

    def __init__(self, sentences: list[str], *, reference: bool) -> None:
        self.sentences = sentences
        self.reference = reference
        self._stems: list[frozenset[str] | None] = [None] * len(sentences)
        self._numbers: dict[int, frozenset[str]] = {}
        self._names: dict[int, frozenset[str]] = {}
        self.numbers = frozenset(numbers_in(sentences))
        self.lowered = " ".join(sentences).lower()

    def stems(self, index: int) -> frozenset[str]:
        """Content stems of sentence `index`."""
        found = self._stems[index]
        if found is None:
            found = self._stems[index] = frozen(content_stems(self.sentences[index]))
        return found

    def numbers_of(self, index: int) -> frozenset[str]:
        """Numbers of sentence `index`."""
        if index not in self._numbers:
            self._numbers[index] = frozen(numbers(self.sentences[index]))
        return self._numbers[index]

    def names_of(self, index: int) -> frozenset[str]:
        """Names in sentence `index` (a capitalised first word counts: sources are not judged by it)."""
        if index not in self._names:
            self._names[index] = frozen(entities(self.sentences[index], strict=False))
        return self._names[index]


def _judge_one(claim: _Facts, source: _Source, closest: list[int], asked: frozenset[str]) -> str:
    """supported / contradicted / unsupported against one source, from its closest sentences."""
    wanted = claim.stems
    if not wanted:
        return "supported"
    first = closest[0]
    first_stems = source.stems(first)
    near = first_stems.union(*(source.stems(i) for i in closest[1:]))
    coverage = len(wanted & near) / len(wanted)
    names = claim.names - asked
    # A reference answers the same question, so sharing any content word is the same subject.
    same_subject = len(wanted & first_stems) / len(wanted) >= (0.1 if source.reference else 0.4)
    if same_subject and claim.numbers and source.numbers_of(first) and not claim.numbers & source.numbers:
        return "contradicted"  # the source gives this statement a different number
    missing_names = {n for n in names if n not in source.lowered}
    if source.reference and same_subject and missing_names and source.names_of(first) - claim.names - asked:
        # another model answering the same question names someone else where this answer's name is absent
        return "contradicted"
    keys = len(claim.numbers) + len(names)
    key_coverage = (len(claim.numbers & source.numbers) + len(names) - len(missing_names)) / keys if keys else 1.0
    if coverage >= 0.5 and key_coverage >= 0.67:
        return "supported"
    return "unsupported"


def _combine(status: ClaimStatus) -> str:
    verdicts = status.by_source
    references = [v for k, v in verdicts.items() if k.startswith("reference")]
    against = sum(v == "contradicted" for v in references)
    if verdicts.get("knowledge") == "contradicted" or against > sum(v == "supported" for v in references):
        return "contradicted"
    if any(v == "supported" for v in verdicts.values()):
        return "supported"
    return "unsupported"


async def detect(item: CheckInput, parsed: Parsed, vectors: Vectors, judge: ClaimJudge | None,
                 web: WebVerifier | None, notes: list[str], found: dict[str, list[str]] | None = None,
                 ) -> list[Finding]:
    """One finding summarising the claims that are contradicted or unsupported, with per-claim evidence.

    `found` is `sources(item)` when the caller already split the sources (the checker does, once).
    """
    found = sources(item) if found is None else found
    checked_facts = _claim_facts(parsed)
    checked = [claim for claim, _ in checked_facts]
    if not checked:
        return []
    if not found and web is None:
        notes.append("no knowledge, reference answers or web verifier: facts were not checked")
        return []
    statuses = [ClaimStatus(claim) for claim in checked]
    facts = [claim_facts for _, claim_facts in checked_facts]
    asked = frozenset(entities(item.question))
    claim_rows = vectors.rows(checked)  # looked up once, multiplied with each source
    for name, sentences in found.items():
        source = _Source(sentences, reference=name.startswith("reference"))
        matrix = vectors.product(claim_rows, vectors.rows(sentences))
        # Row-wise argsort is the same sort as sorting each row alone; the TOP_K largest, best first.
        closest: list[list[int]] = np.argsort(matrix, axis=1)[:, : -TOP_K - 1 : -1].tolist()
        for order, status, claim in zip(closest, statuses, facts, strict=True):
            status.by_source[name] = _judge_one(claim, source, order, asked)
            status.closest[name] = sentences[order[0]]
    for status in statuses:
        status.status = _combine(status) if status.by_source else "unsupported"
    doubtful = [s for s in statuses if s.status != "supported"]
    if judge is not None and doubtful and found:
        await _ask_judge(judge, doubtful[:MAX_JUDGED], found, vectors, notes)
    if web is not None:
        await _ask_web(web, [s for s in statuses if s.status != "supported"][:MAX_WEB], notes)
    return _summarise(statuses, list(found), facts)


async def _ask_judge(judge: ClaimJudge, doubtful: list[ClaimStatus], found: dict[str, list[str]],
                     vectors: Vectors, notes: list[str]) -> None:
    pool = [s for sentences in found.values() for s in sentences]
    items = []
    for status in doubtful:
        row = vectors.sims([status.claim], pool)[0]
        items.append(ClaimEvidence(status.claim, tuple(pool[i] for i in row.argsort()[::-1][:4])))
    try:
        verdicts = await judge.judge_support(items)
    except Exception as err:  # another model behind a network: its failure only lowers what we know
        notes.append(f"support judge failed: {type(err).__name__}: {str(err)[:200]}")
        return
    for status, verdict in zip(doubtful, verdicts, strict=False):
        status.method = f"judge:{getattr(judge, 'name', 'judge')}"
        status.by_source["judge"] = verdict.label
        if verdict.label == "supported":
            status.status = "supported"
        elif verdict.label == "contradicted" and verdict.confidence >= 0.5:
            status.status = "contradicted"
        else:
            status.status = "unsupported"


async def _ask_web(web: WebVerifier, doubtful: list[ClaimStatus], notes: list[str]) -> None:
    for status in doubtful:
        try:
            evidence = await web.verify(status.claim)
        except Exception as err:  # a browser capability may fail in many ways: note it, keep the rest
            notes.append(f"web verification failed: {type(err).__name__}: {str(err)[:200]}")
            return
        status.by_source["web"] = evidence.verdict
        if evidence.sources:
            status.closest["web"] = f"{evidence.sources[0]}: {evidence.snippet}"
        if evidence.verdict == "supported":
            status.status, status.method = "supported", "web"
        elif evidence.verdict == "contradicted":
            status.status, status.method = "contradicted", "web"


def _summarise(statuses: list[ClaimStatus], source_names: list[str], facts: list[_Facts]) -> list[Finding]:
    total = len(statuses)
    contradicted = [s for s in statuses if s.status == "contradicted"]
    unsupported = [s for s in statuses if s.status == "unsupported"]
    # A claim's facts hold its numbers and (strict) names: the same as numbers(claim), entities(claim).
    unsupported_weight = sum(1.0 if f.numbers or f.names else 0.5
                             for s, f in zip(statuses, facts, strict=True) if s.status == "unsupported")
    severity = clip(0.45 * unsupported_weight / total)
    if contradicted:
        severity = clip(0.6 + 0.4 * len(contradicted) / total)
    if severity < 0.1:
        return []
    if contradicted:
        reason = f'{len(contradicted)} of {total} claims contradict the sources, e.g. "{contradicted[0].claim[:120]}"'
    else:
        reason = f"{len(unsupported)} of {total} claims are not supported by any source"
    return [Finding("unsupported", severity, reason,
                    {"claims": [s.as_dict() for s in statuses[:40]], "sources": source_names,
                     "contradicted": len(contradicted), "unsupported": len(unsupported), "total": total})]
