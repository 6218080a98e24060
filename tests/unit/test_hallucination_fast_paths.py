"""The shortcuts that keep a check fast find exactly what the full scans found.

Each shortcut skips work it can prove is useless (a sentence without digits has no date, claims
sharing < 2 stems are no contradiction, a month name starts a word, a stream's new sentence end
lies in the new delta); these tests pin the cases at the edge of each proof.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from bot.engine.embeddings import LexicalEmbedder
from bot.engine.hallucination import CheckInput, HallucinationChecker, StreamGuard
from bot.engine.hallucination.blas import SERIAL_BELOW, _controls, single_thread
from bot.engine.hallucination.temporal import MONTH_PREFIXES, MONTHS, mentions
from bot.engine.hallucination.text import content_stems, numbers, numbers_in, parse, stems_of, words
from bot.engine.hallucination.vectors import Vectors

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)


async def _reasons(answer: str, **fields: object) -> list[str]:
    item = CheckInput(question=str(fields.pop("question", "Tell me about it.")), answer=answer, now=NOW,
                      **fields)  # type: ignore[arg-type]
    report = await HallucinationChecker(LexicalEmbedder()).check(item)
    return [f.reason for f in report.findings]


# -- shared tokens ------------------------------------------------------------------------------------

def test_shared_stems_and_numbers_equal_the_per_text_ones() -> None:
    texts = ["The adult human body has 206 bones.", "Em 2024, a água ferve a 100 °C; 1.000 ou 1,5%?",
             "Don't re-use the thread-safe API's 3 handles.", "", "— 42 —"]
    for text in texts:
        assert stems_of(words(text)) == content_stems(text)
    assert numbers_in(texts) == set().union(*(numbers(t) for t in texts))
    parsed = parse("First claim about 12 bones here. Second claim without any digits at all.\n- A list item claim too")
    assert parsed.claim_stems == [content_stems(c) for c in parsed.claims]
    assert parsed.claim_numbers == [frozenset(numbers(c)) for c in parsed.claims]
    assert parsed.sentence_words == [words(s) for s in parsed.sentences]


# -- temporal -----------------------------------------------------------------------------------------

def test_every_month_name_starts_with_a_listed_prefix() -> None:
    assert all(name.casefold().startswith(MONTH_PREFIXES) for name in MONTHS)


def test_month_dates_after_punctuation_and_in_capitals_are_still_read() -> None:
    for sentence in ("The launch (March 5, 2031) went well.", "Ele nasceu em 31 DE ABRIL DE 2025.",
                     "Released mid-March 5, 2031 or so", "Due ſeptember 31, 2030."):
        assert any(m.month is not None for m in mentions(sentence)), sentence


async def test_an_impossible_date_deep_in_a_long_answer_is_found() -> None:
    filler = " ".join(f"Caching layer {i} keeps results close to reader {i}." for i in range(80))
    reasons = await _reasons(filler + " The release shipped on February 30, 2024.")
    assert any('"February 30, 2024" is not a real date' in r for r in reasons)


# -- contradiction ------------------------------------------------------------------------------------

async def test_a_contradiction_between_the_first_and_last_of_many_claims_is_found() -> None:
    filler = " ".join(f"Topic number {i} covers an unrelated subject called item{i} in detail." for i in range(70))
    answer = f"The adult human body has 206 bones. {filler} In total, the adult human body has 212 bones."
    reasons = await _reasons(answer, question="How many bones does an adult have?")
    assert any("different numbers" in r for r in reasons)


# -- stream guard -------------------------------------------------------------------------------------

def test_stream_guard_sees_a_sentence_end_split_across_two_deltas() -> None:
    guard = StreamGuard()
    finding = None
    for _ in range(4):
        for delta in ("The cache keeps recent results close.", " "):  # ". " arrives in two pieces
            finding = guard.feed(delta) or finding
    assert finding is not None and "appeared 4 times" in finding.reason


def test_stream_guard_keeps_only_a_bounded_tail_without_sentence_ends() -> None:
    guard = StreamGuard(max_words=10**9)
    for i in range(20_000):
        assert guard.feed(f"w{i} ") is None
    assert guard._pending_chars <= 4000


# -- BLAS ---------------------------------------------------------------------------------------------

def test_single_thread_blas_restores_the_thread_count() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.random((90, 512)), rng.random((200, 512))
    expected = a @ b.T
    controls = _controls()
    before = controls[0]() if controls else None
    with single_thread():
        if controls:
            assert controls[0]() == 1
        inside = a @ b.T
    assert (controls[0]() if controls else None) == before
    assert np.allclose(inside, expected, rtol=1e-12, atol=0)  # only the summation split differs


def test_products_below_the_serial_bound_are_the_same_on_any_thread_count() -> None:
    """`Vectors.product` skips `single_thread()` below SERIAL_BELOW: OpenBLAS runs them on one
    thread anyway, so the bits are those of a one-thread run (here, with the default count)."""
    rng = np.random.default_rng(11)
    for rows, cols in ((1, 1), (1, 12), (2, 8), (1, 17)):
        assert rows * cols * 512 < SERIAL_BELOW
        a, b = rng.random((rows, 512)), rng.random((cols, 512))
        with single_thread():
            serial = a @ b.T
        assert np.array_equal(Vectors.product(a, b), serial)
