"""Each detector on real examples: what it flags, what it leaves alone, and the reason it gives."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.engine.embeddings import LexicalEmbedder
from bot.engine.hallucination import CheckInput, HallucinationChecker, Report, StreamStats

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)


async def _check(**fields: object) -> Report:
    fields.setdefault("now", NOW)
    return await HallucinationChecker(LexicalEmbedder()).check(CheckInput(**fields))  # type: ignore[arg-type]


def _by(report: Report, detector: str) -> list[str]:
    return [f.reason for f in report.findings if f.detector == detector]


# -- repetition -----------------------------------------------------------------------------------

async def test_repeated_sentence_is_reported_with_its_count() -> None:
    answer = "Kubernetes orchestrates containers. " + "It helps you manage containers at scale. " * 4
    report = await _check(question="What is Kubernetes?", answer=answer)
    assert any('"It helps you manage containers at scale." appears 4 times' in r for r in _by(report, "repetition"))
    assert report.suspect


async def test_looping_tail_is_reported() -> None:
    report = await _check(question="List Python web frameworks.",
                          answer="Django, Flask and FastAPI are popular. " + "Django Django Django " * 12)
    assert any("ends in a loop" in r for r in _by(report, "repetition"))


async def test_repetitive_code_and_tables_are_not_repetition() -> None:
    answer = ("```java\npublic int getA() {\n    return a;\n}\npublic int getB() {\n    return b;\n}\n```\n\n"
              "| Method | Idempotent |\n|---|---|\n| GET | yes |\n| PUT | yes |\n| DELETE | yes |")
    report = await _check(question="Show Java getters and a table of idempotent HTTP methods.", answer=answer)
    assert _by(report, "repetition") == []


# -- contradiction --------------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "why"), [
    ("Redis can persist data to disk using RDB snapshots. Redis does not persist data to disk, so data is lost.",
     "one negates the other"),
    ("A Python list is mutable, so items change in place. Python list items are immutable in place.",
     "opposite words"),
    ("The adult human body has 206 bones in total. In total, the adult human body has 212 bones.",
     "different numbers"),
    ("Sim, o Python é uma linguagem de tipagem dinâmica. Como o Python é uma linguagem de tipagem estática, "
     "os erros aparecem antes.", "opposite words"),
])
async def test_contradicting_claims_are_reported_as_a_pair(answer: str, why: str) -> None:
    report = await _check(question="Explain.", answer=answer)
    found = [f for f in report.findings if f.detector == "contradiction"]
    assert found and why in found[0].reason
    assert len(found[0].evidence["claims"]) == 2


async def test_consistent_answer_has_no_contradiction() -> None:
    report = await _check(question="Is a Python list mutable?",
                          answer="Yes. A Python list is mutable: you can append and change items. A tuple, by "
                                 "contrast, is immutable.")
    assert _by(report, "contradiction") == []


# -- scope ----------------------------------------------------------------------------------------

async def test_off_topic_answer_is_out_of_scope() -> None:
    report = await _check(question="How do I center a div in CSS?",
                          answer="The mitochondria is the powerhouse of the cell, producing ATP through respiration.")
    assert _by(report, "scope")
    assert report.suspect


async def test_on_topic_answer_is_in_scope() -> None:
    report = await _check(question="What does a load balancer do?",
                          answer="A load balancer spreads incoming requests across several servers and stops "
                                 "sending traffic to a server that fails its health checks.")
    assert _by(report, "scope") == []
    assert not report.suspect


# -- temporal -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "expected"), [
    ("The contract was signed on February 30, 2024.", "is not a real date"),
    ("A reunião aconteceu em 31 de abril de 2025.", "is not a real date"),
    ("The invoice is due on 2025-13-05.", "is not a real date"),
    ("A entrega foi registrada em 32/05/2026.", "not a valid date in any format"),
    ("Brazil won the 2030 FIFA World Cup in the final held in July 2030.", "told as past"),
    ("O iPhone 20 foi lançado em setembro de 2028.", "told as past"),
    ("Ana was born in 1990, so she is 45 years old.", "not 45"),
    ("The author was born in 1952 and died in 1948.", "before being born"),
    ("The project ran from 2015 to 2019, a total of 8 years.", "is 4 years, not 8"),
    ("The launch happened on Monday, 14 March 2025.", "was a Friday"),
    ("The company was founded in 2010, 25 years ago.", "not 25"),
])
async def test_temporal_errors(answer: str, expected: str) -> None:
    report = await _check(question="When?", answer=answer)
    assert any(expected in r for r in _by(report, "temporal")), report.findings


@pytest.mark.parametrize("answer", [
    "The next leap day is 29 February 2028.",
    "The next FIFA World Cup will be held in 2030.",
    "The deadline is Friday, 11 December 2026.",
    "A fatura vence em 10/12/2026.",
    "Machado de Assis was born in 1839 and died in 1908, at the age of 69.",
    "The Apollo program ran from 1961 to 1972, about 11 years.",
])
async def test_valid_dates_are_not_flagged(answer: str) -> None:
    report = await _check(question="When?", answer=answer)
    assert _by(report, "temporal") == []


# -- unsupported ----------------------------------------------------------------------------------

KNOWLEDGE = ["The default TCP port for PostgreSQL is 5432. It can be changed with the port parameter in "
             "postgresql.conf."]


async def test_claim_contradicting_knowledge_is_reported_with_per_claim_evidence() -> None:
    report = await _check(question="What is the default port of PostgreSQL?",
                          answer="PostgreSQL listens on port 3306 by default.", knowledge=KNOWLEDGE)
    finding = next(f for f in report.findings if f.detector == "unsupported")
    assert "contradict" in finding.reason
    claim = finding.evidence["claims"][0]
    assert claim["status"] == "contradicted"
    assert "5432" in claim["closest"]["knowledge"]
    assert report.suspect


async def test_claim_supported_by_knowledge_passes() -> None:
    report = await _check(question="What is the default port of PostgreSQL?",
                          answer="PostgreSQL listens on TCP port 5432 by default.", knowledge=KNOWLEDGE)
    assert _by(report, "unsupported") == []


async def test_cross_model_selfcheck_flags_a_name_no_other_model_gives() -> None:
    report = await _check(question="Who invented the World Wide Web?",
                          answer="The World Wide Web was invented by Steve Jobs at Apple in 1985.",
                          reference_answers=["Tim Berners-Lee invented it at CERN in 1989.",
                                             "Tim Berners-Lee, at CERN, in 1989."])
    finding = next(f for f in report.findings if f.detector == "unsupported")
    assert finding.evidence["claims"][0]["status"] == "contradicted"


async def test_without_sources_facts_are_not_checked_and_it_says_so() -> None:
    report = await _check(question="Who painted the Mona Lisa?", answer="Leonardo da Vinci painted the Mona Lisa.")
    assert _by(report, "unsupported") == []
    assert any("facts were not checked" in n for n in report.notes)


# -- drift ----------------------------------------------------------------------------------------

async def test_answer_contradicting_the_earlier_answer_drifts() -> None:
    report = await _check(question="How many days are in a leap year?", answer="A leap year has 365 days.",
                          earlier_answers=["Leap years have 366 days because February gets a 29th day."])
    assert any("numbers differ" in r for r in _by(report, "drift"))


async def test_answer_agreeing_with_an_earlier_answer_does_not_drift() -> None:
    report = await _check(question="Quantos bits tem um byte?", answer="Um byte tem 8 bits.",
                          earlier_answers=["Um byte é formado por 8 bits."])
    assert _by(report, "drift") == []


# -- stall ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("stats", "expected"), [
    (StreamStats(time_to_first_token_ms=500, longest_gap_ms=90_000, finished=False, timed_out=True), "timed out"),
    (StreamStats(time_to_first_token_ms=500, finished=False), "stopped before"),
    (StreamStats(time_to_first_token_ms=500, finish_reason="length"), "token limit"),
    (StreamStats(time_to_first_token_ms=500, longest_gap_ms=40_000), "froze for 40 s"),
    (StreamStats(time_to_first_token_ms=95_000), "first token took 95 s"),
])
async def test_stalls(stats: StreamStats, expected: str) -> None:
    report = await _check(question="Explain TLS.", answer="TLS starts with a handshake in which", stream_stats=stats)
    assert any(expected in r for r in _by(report, "stall"))


async def test_a_healthy_stream_is_no_stall() -> None:
    stats = StreamStats(time_to_first_token_ms=400, longest_gap_ms=200, total_ms=5000, finish_reason="stop")
    report = await _check(question="What is Docker?", answer="Docker packages an app and its dependencies into an "
                          "image that runs the same on any machine.", stream_stats=stats)
    assert _by(report, "stall") == []
