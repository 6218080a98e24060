"""StreamGuard stops loops early; bad input (empty, enormous, non-text, other languages) never crashes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bot.engine.embeddings import LexicalEmbedder
from bot.engine.hallucination import (
    Calibration,
    CalibrationError,
    CheckInput,
    HallucinationChecker,
    StreamGuard,
    StreamStatsRecorder,
)


def _stream(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_stream_guard_stops_a_repeated_sentence_at_the_fourth_time() -> None:
    guard = StreamGuard()
    text = "Caching helps. " + "The cache keeps recent results close to the reader. " * 50
    fed = 0
    finding = None
    for delta in _stream(text):
        fed += len(delta)
        finding = guard.feed(delta)
        if finding is not None:
            break
    assert finding is not None and "appeared 4 times while streaming" in finding.reason
    assert fed < len(text) / 10  # stopped long before the end
    assert guard.feed("more") is finding  # stays tripped


def test_stream_guard_stops_a_word_loop_without_sentence_ends() -> None:
    guard = StreamGuard()
    finding = None
    for delta in _stream("The answer is " + "and then and then " * 200):
        finding = guard.feed(delta) or finding
        if finding:
            break
    assert finding is not None and "looping" in finding.reason


def test_stream_guard_lets_a_normal_answer_and_code_through() -> None:
    guard = StreamGuard()
    text = ("A load balancer spreads requests across servers. It checks their health. It can terminate TLS.\n"
            "```python\n" + "    x += 1\n" * 40 + "```\n| a | b |\n| a | b |\n| a | b |\n| a | b |\n")
    assert all(guard.feed(delta) is None for delta in _stream(text))


def test_stream_guard_stops_runaway_output() -> None:
    guard = StreamGuard(max_words=500)
    finding = None
    for i in range(200):
        finding = guard.feed(f" word{i} alpha{i} beta{i} gamma{i}.")
        if finding:
            break
    assert finding is not None and "ran past 500 words" in finding.reason


def test_stream_stats_recorder_measures_first_token_and_gap() -> None:
    recorder = StreamStatsRecorder(started_at=100.0)
    for at in (100.5, 100.6, 121.6, 121.7):
        recorder.delta(at)
    stats = recorder.stats(ended_at=122.0, finished=True, finish_reason="stop")
    assert stats.time_to_first_token_ms == 500.0
    assert round(stats.longest_gap_ms or 0) == 21_000
    assert stats.deltas == 4


async def _check(answer: str, question: str = "Explain caching.") -> tuple[int, bool, list[str], list[str]]:
    report = await HallucinationChecker(LexicalEmbedder()).check(CheckInput(question=question, answer=answer))
    json.dumps(report.as_dict())  # always serialisable
    return report.confidence, report.suspect, [f.reason for f in report.findings], report.notes


async def test_empty_answer_scores_zero_with_a_reason() -> None:
    for answer in ("", "   \n\t"):
        confidence, suspect, reasons, _ = await _check(answer)
        assert confidence == 0 and suspect and reasons == ["the answer is empty"]


async def test_answer_without_words_is_suspect() -> None:
    confidence, suspect, reasons, _ = await _check("!!! ??? ... ---")
    assert confidence == 0 and suspect and "contains no words" in reasons[0]


async def test_enormous_answer_stays_fast_and_says_it_was_capped() -> None:
    answer = " ".join(f"Caching keeps result {i} close to reader {i % 97}." for i in range(15_000))  # 105k words
    started = time.perf_counter()
    confidence, _, _, notes = await _check(answer)
    assert time.perf_counter() - started < 5.0
    assert 0 <= confidence <= 100
    assert any("only the first" in n for n in notes)


async def test_enormous_loop_is_caught() -> None:
    _, suspect, reasons, _ = await _check("Caching keeps recent results close to the reader. " * 14_300)
    assert suspect and any("appears" in r for r in reasons)


async def test_code_only_answer_is_checked_without_claims() -> None:
    answer = "```python\ndef reverse(text: str) -> str:\n    return text[::-1]\n```"
    confidence, suspect, _, notes = await _check(answer, "Write a Python function that reverses a string.")
    assert not suspect and confidence > 50
    assert any("no prose" in n for n in notes)


async def test_portuguese_and_mixed_answers_get_a_sensible_score() -> None:
    confidence, suspect, _, _ = await _check(
        "Uma chave primária identifica cada linha de uma tabela de forma única e não aceita valores nulos.",
        "O que é uma chave primária?")
    assert not suspect and confidence > 50
    confidence, _, _, _ = await _check("日本の首都は東京です。", "What is the capital of Japan?")
    assert 0 <= confidence <= 100


async def test_binary_looking_text_does_not_crash() -> None:
    confidence, _, _, _ = await _check("\x00\x01\x02 ÿþ \ufffd" * 1000)
    assert 0 <= confidence <= 100


def test_malformed_calibration_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text('{"weights": {"scope": "x"}, "bias": 0, "threshold": 50}', encoding="utf-8")
    with pytest.raises(CalibrationError, match="invalid hallucination calibration") as caught:
        Calibration.load(path)
    assert caught.value.hint and "fit" in caught.value.hint
