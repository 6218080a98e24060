"""Divergence on a labelled set of agreeing and disagreeing answer pairs (English and Portuguese)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bot.engine.divergence import compare_claims, measure_divergence, semantic_term, verdict_term
from bot.engine.embeddings import Embedder, LexicalEmbedder, LocalEmbedder

PAIRS = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "fixtures" / "divergence" / "pairs.jsonl").read_text().splitlines()
    if line.strip()
]
THRESHOLD = 20.0


def _embedders() -> list[Embedder]:
    embedders: list[Embedder] = [LexicalEmbedder()]
    if LocalEmbedder.available():
        embedders.append(LocalEmbedder())
    return embedders


def test_the_labelled_set_is_balanced() -> None:
    labels = [p["label"] for p in PAIRS]
    assert labels.count("agree") >= 20
    assert labels.count("disagree") >= 20


@pytest.mark.parametrize("embedder", _embedders(), ids=lambda e: e.name)
async def test_threshold_separates_agreeing_from_disagreeing_pairs(embedder: Embedder) -> None:
    wrong = []
    for pair in PAIRS:
        divergence = await measure_divergence(
            answer=pair["answer"],
            reference=pair["reference"],
            score=pair["score"],
            decision=pair["decision"],
            embedder=embedder,
        )
        predicted = "disagree" if divergence.pct > THRESHOLD else "agree"
        if predicted != pair["label"]:
            wrong.append((pair["id"], round(divergence.pct, 1)))
    accuracy = 1 - len(wrong) / len(PAIRS)
    # MiniLM reaches 43/44 and the lexical fallback 41/44 on this set; both must stay >= 90 %.
    assert accuracy >= 0.90, wrong


async def test_sycophantic_approval_of_a_wrong_fact_still_diverges() -> None:
    """The validator approved (score 80) but its own answer names a different capital."""
    divergence = await measure_divergence(
        answer="The capital of Australia is Sydney.",
        reference="Canberra is the capital of Australia.",
        score=80,
        decision="approve",
        embedder=LexicalEmbedder(),
    )
    assert divergence.pct > THRESHOLD
    assert any("canberra" in c for c in divergence.conflicts)


def test_verdict_term_decision_pulls_the_score() -> None:
    assert verdict_term(100, "approve") == 0.0
    assert verdict_term(95, "reject") == pytest.approx(0.70)
    assert verdict_term(90, "revise") == pytest.approx(0.35)
    assert verdict_term(0, "approve") == pytest.approx(0.50)
    assert verdict_term(-50, "approve") == pytest.approx(0.50)


def test_semantic_term_is_bounded() -> None:
    assert semantic_term(0.99, "all-MiniLM-L6-v2") == 0.0
    assert semantic_term(-0.2, "all-MiniLM-L6-v2") == 1.0
    assert 0 < semantic_term(0.6, "all-MiniLM-L6-v2") < 1


def test_claims_polarity_numbers_and_number_words() -> None:
    assert compare_claims("Yes, it is.", "No, it is not.").hard
    assert compare_claims("Não, nunca.", "Sim, sempre.").hard
    assert compare_claims("It has 212 bones.", "It has 206 bones.").hard
    assert compare_claims("There are five continents.", "There are seven continents.").hard
    assert compare_claims("15% of 200 is 30.", "0.15 × 200 = 30.").score == 0.0
    assert compare_claims("Mil e 1.000 são iguais", "1000").score == 0.0


async def test_without_reference_only_the_verdict_counts() -> None:
    divergence = await measure_divergence(answer="x", reference=None, score=40, decision="revise")
    assert divergence.embedder == "none"
    assert divergence.pct == pytest.approx(100 * 0.40 * 0.60)


async def test_empty_and_huge_answers_do_not_crash() -> None:
    huge = "word " * 20000
    divergence = await measure_divergence(
        answer=huge, reference="short", score=50, decision="revise", embedder=LexicalEmbedder()
    )
    assert 0 <= divergence.pct <= 100
    empty = await measure_divergence(answer="", reference="something", score=50, decision="revise")
    assert 0 <= empty.pct <= 100


async def test_remembered_feature_slots_never_change_a_vector() -> None:
    """The slot memo (and starting it afresh when full) gives the vectors hashing every feature gives."""
    import hashlib
    import math
    import re
    from collections import Counter

    def hashed(text: str) -> list[float]:  # the definition: every feature hashed, in first-seen order
        words = [w.lower() for w in re.findall(r"\w+", text)]
        features: Counter[str] = Counter(f"w:{w}" for w in words)
        joined = " ".join(words)
        features.update(f"c:{joined[i:i + 3]}" for i in range(max(0, len(joined) - 2)))
        vector = [0.0] * 512
        for feature, count in features.items():
            index = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=4).digest(), "little") % 512
            vector[index] += 1.0 + math.log(count)
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    texts = [pair[key] for pair in PAIRS for key in ("answer", "reference")]
    texts += ["", "The capital of France is Paris. Paris, Paris!", "naïve café 東京 123", "go " * 1500]
    tiny = LexicalEmbedder()
    tiny.cache_size = 5  # starts afresh many times per text
    reused = LexicalEmbedder()
    await reused.embed(texts)  # every slot already remembered
    expected = [hashed(text) for text in texts]
    assert await LexicalEmbedder().embed(texts) == expected
    assert await tiny.embed(texts) == expected
    assert await reused.embed(texts) == expected
    assert len(tiny._slots) <= 5


async def test_remembered_texts_give_the_vectors_computing_them_gives() -> None:
    """The per-text memo: same rows bit for bit, bounded, and a caller's changes never reach it."""
    texts = [pair[key] for pair in PAIRS for key in ("answer", "reference")]
    expected = LexicalEmbedder().rows(texts)
    memo = LexicalEmbedder()
    memo.rows_cached = 6
    first = memo.rows(texts[:4])
    first[:] = 0.0  # the caller owns what it gets
    mixed = memo.rows([texts[3], texts[0], texts[5], texts[3]])  # remembered, new, a text twice
    assert np.array_equal(mixed, expected[[3, 0, 5, 3]])
    assert np.array_equal(memo.rows(texts), expected)  # more texts than it remembers
    assert len(memo._rows) <= 6
    assert memo.rows([]).shape == (0, memo.dimensions)
