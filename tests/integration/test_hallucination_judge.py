"""LLMClaimJudge at the wire (a local OpenAI-compatible peer scripted with structured answers), the
checker using it, its failures, and the web-verifier hook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from bot.engine.embeddings import LexicalEmbedder
from bot.engine.hallucination import (
    CheckInput,
    ClaimEvidence,
    HallucinationChecker,
    LLMClaimJudge,
    WebEvidence,
)
from bot.engine.providers.factory import build_provider
from bot.engine.providers.router import Deployment, Router, RouterConfig
from bot.engine.schemas import MalformedOutputError
from tests.fakes import FakeOpenAICompat

NOW = datetime(2026, 11, 24, tzinfo=UTC)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAICompat]:
    async with FakeOpenAICompat() as fake:
        yield fake


@pytest.fixture
async def router(server: FakeOpenAICompat) -> AsyncIterator[Router]:
    provider = build_provider(kind="openai_compatible", name="judge-peer", base_url=server.url)
    yield Router(deployments=[Deployment(provider, "judge")], config=RouterConfig(retries_per_group=0))
    await provider.aclose()  # type: ignore[attr-defined]


async def test_pairs_are_judged_with_a_json_schema(server: FakeOpenAICompat, router: Router) -> None:
    server.script("judge", structured={"ClaimPairVerdicts": {"verdicts": [
        {"index": 0, "label": "Contradiction", "confidence": 0.9, "reason": "disk persistence is denied"},
        {"index": 1, "label": "consistent", "confidence": 0.8}]}})
    judge = LLMClaimJudge(router, "judge")
    verdicts = await judge.judge_pairs([("Redis persists to disk.", "Redis never writes to disk."),
                                        ("Redis is fast.", "Redis keeps data in memory.")])
    assert [v.label for v in verdicts] == ["contradiction", "consistent"]
    assert verdicts[0].confidence == 0.9 and "denied" in verdicts[0].reason
    body = server.calls("/v1/chat/completions")[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["title"] == "ClaimPairVerdicts"
    assert body["temperature"] == 0.0
    assert "Redis never writes to disk." in body["messages"][-1]["content"]


async def test_support_is_judged_and_missing_verdicts_are_not_enough_info(server: FakeOpenAICompat,
                                                                           router: Router) -> None:
    server.script("judge", structured={"ClaimSupportVerdicts": {"verdicts": [
        {"index": 0, "label": "contradicted", "confidence": 0.95, "reason": "the port is 5432"}]}})
    verdicts = await LLMClaimJudge(router, "judge").judge_support([
        ClaimEvidence("PostgreSQL uses port 3306.", ("The default port for PostgreSQL is 5432.",)),
        ClaimEvidence("It is open source.", ()),
    ])
    assert [v.label for v in verdicts] == ["contradicted", "not_enough_info"]
    assert verdicts[1].confidence == 0.0


async def test_malformed_twice_raises_after_one_correction(server: FakeOpenAICompat, router: Router) -> None:
    server.script("judge", answer="I think they contradict.")
    with pytest.raises(MalformedOutputError):
        await LLMClaimJudge(router, "judge").judge_pairs([("a is b", "a is not b")])
    calls = server.calls("/v1/chat/completions")
    assert len(calls) == 2
    assert "Invalid" in calls[1].body["messages"][-1]["content"]


async def test_checker_uses_the_judge_for_paraphrased_contradictions(server: FakeOpenAICompat,
                                                                     router: Router) -> None:
    server.script("judge", structured={"ClaimPairVerdicts": {"verdicts": [
        {"index": 0, "label": "contradiction", "confidence": 0.9, "reason": "sorted vs unsorted input"}]}})
    answer = ("Binary search runs in logarithmic time because it halves the search range. Binary search needs the "
              "array to be sorted. Binary search works on an array that is not ordered as well, so the array "
              "order is optional.")
    lexical = await HallucinationChecker(LexicalEmbedder()).check(CheckInput("How does binary search work?", answer,
                                                                             now=NOW))
    judged = await HallucinationChecker(LexicalEmbedder(), judge=LLMClaimJudge(router, "judge")).check(
        CheckInput("How does binary search work?", answer, now=NOW))
    found = [f for f in judged.findings if f.detector == "contradiction"]
    assert not [f for f in lexical.findings if f.detector == "contradiction"]
    finding = found[0]
    assert "needs the array to be sorted" in finding.evidence["claims"][0]
    assert finding.evidence["method"] == "judge" and finding.evidence["judge"] == "judge"
    assert judged.confidence < lexical.confidence


async def test_checker_asks_the_judge_about_doubtful_claims(server: FakeOpenAICompat, router: Router) -> None:
    server.script("judge", structured={
        "ClaimPairVerdicts": {"verdicts": []},
        "ClaimSupportVerdicts": {"verdicts": [{"index": 0, "label": "contradicted", "confidence": 0.9,
                                               "reason": "the knowledge says 47 minutes"}]}})
    item = CheckInput("Summarise the incident.", "The outage was caused by a DDoS attack on the EU region.",
                      knowledge=["Root cause: the TLS certificate on the load balancer had expired."], now=NOW)
    report = await HallucinationChecker(LexicalEmbedder(), judge=LLMClaimJudge(router, "judge")).check(item)
    finding = next(f for f in report.findings if f.detector == "unsupported")
    claim = finding.evidence["claims"][0]
    assert claim["status"] == "contradicted" and claim["method"] == "judge:judge"


async def test_a_failing_judge_degrades_to_heuristics_with_a_note(server: FakeOpenAICompat, router: Router) -> None:
    server.script("judge", fail_status=500, fail_times=-1)
    answer = "The adult human body has 206 bones in total. In total, the adult human body has 212 bones."
    report = await HallucinationChecker(LexicalEmbedder(), judge=LLMClaimJudge(router, "judge")).check(
        CheckInput("How many bones?", answer, now=NOW))
    assert any("contradiction judge failed" in n for n in report.notes)
    assert any(f.detector == "contradiction" and f.evidence["method"] == "numbers" for f in report.findings)


class _SearchIndex:
    """The browser capability's stand-in: a search engine answering from a fixed index."""

    def __init__(self, pages: dict[str, str]) -> None:
        self.pages = pages
        self.asked: list[str] = []

    async def verify(self, claim: str) -> WebEvidence:
        self.asked.append(claim)
        for url, text in self.pages.items():
            if "Canberra" in text and "Sydney" in claim:
                return WebEvidence("contradicted", (url,), text)
        return WebEvidence("not_found")


async def test_web_verifier_is_asked_about_unsupported_claims() -> None:
    web = _SearchIndex({"https://example.org/australia": "Canberra is the capital of Australia."})
    report = await HallucinationChecker(LexicalEmbedder(), web_verifier=web).check(
        CheckInput("What is the capital of Australia?", "The capital of Australia is Sydney.", now=NOW))
    assert web.asked == ["The capital of Australia is Sydney."]
    claim = next(f for f in report.findings if f.detector == "unsupported").evidence["claims"][0]
    assert claim["status"] == "contradicted" and claim["method"] == "web"
    assert "example.org" in claim["closest"]["web"]
