"""Hallucination checks inside the engine, against a local LM Studio peer (SQLite and MariaDB).

Every answer is checked; a suspect one the validator agreed with is answered again by a third
model and the better answer kept; a looping stream is cut off while it streams; with one model
the answer is kept but marked; the thread in chat shows the reasons.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.db.models import AiModel, AiQualityMetric, ChatConversation, ExecutionLog
from bot.engine.runtime import EngineRuntime
from tests.fakes import FakeLMStudio
from tests.integration.test_chat_engine import close, console_for, wait_for_text
from tests.integration.test_engine import (
    lmstudio,
    metrics,
    plan,
    start_engine,
    step,
    stop,
    subtasks_of,
    verdict,
    wait_task,
)

__all__ = ["lmstudio"]

QUESTION = "When was the Eiffel Tower completed, and where is it?"
# An impossible date and a pair of claims that negate each other: what the checker must catch.
BAD = ("The Eiffel Tower was completed on February 30, 1889. It was completed in 1925, after the war. "
       "The Eiffel Tower is in Paris. The Eiffel Tower is not in Paris.")
GOOD = "The Eiffel Tower was completed on March 31, 1889, in Paris, France, for the World's Fair."
LOOP = "The tower is tall. " * 60
RETRY_MARK = "flagged as a possible hallucination"


def schema_title(body: dict[str, Any]) -> str | None:
    return ((body.get("response_format") or {}).get("json_schema") or {}).get("schema", {}).get("title")


def responder(*, answer: str, recovery: str) -> Callable[[dict[str, Any]], str]:
    """A model that plans, approves, judges for GOOD, answers `answer`, and `recovery` when asked to retry."""

    def respond(body: dict[str, Any]) -> str:
        title = schema_title(body)
        if title == "Plan":
            return json.dumps(plan(step(1, QUESTION)))
        if title == "Verdict":
            return json.dumps(verdict(90, "approve"))
        if title == "Judgement":
            result = body["messages"][-1]["content"].split("RESULT:", 1)[1].split("REVIEW:", 1)[0]
            return json.dumps({"winner": "result" if "March 31" in result else "alternative", "score": 90,
                               "verdict": "approve", "reasons": ["dates"], "merged_result": None})
        return recovery if RETRY_MARK in body["messages"][-1]["content"] else answer

    return respond


async def favour(runtime: EngineRuntime, key: str) -> None:
    """History that makes `key` the executor for research."""
    async with runtime.sessions() as session, session.begin():
        model_id = await session.scalar(select(AiModel.id).where(AiModel.model_key == key))
        session.add(AiQualityMetric(model_id=model_id, category="research", runs=20, successes=20, failures=0,
                                    success_rate=1.0, mean_time_ms=10, validations=20, mean_validation_score=95,
                                    tiebreaks_won=0, tiebreaks_lost=0, ratings_count=0))


async def events_of(runtime: EngineRuntime, task_id: int) -> list[dict[str, Any]]:
    async with runtime.sessions() as session:
        rows = (await session.scalars(select(ExecutionLog).where(ExecutionLog.task_id == task_id)
                                      .order_by(ExecutionLog.id))).all()
    return [{"event": r.event, "details": r.details} for r in rows]


async def test_a_suspect_answer_the_validator_approved_is_answered_again_by_a_third_model(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    lmstudio.script("aaa-executor-7b", family="qwen", responder=responder(answer=BAD, recovery=BAD))
    # The other two agree with the executor when asked plainly (so no tie-break), and answer well
    # when asked to retry a flagged answer.
    lmstudio.script("bbb-helper-3b", family="llama", responder=responder(answer=BAD, recovery=GOOD))
    lmstudio.script("ccc-helper-2b", family="gemma", responder=responder(answer=BAD, recovery=GOOD))
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        await favour(runtime, "aaa-executor-7b")
        before = await metrics(runtime)
        task = await wait_task(runtime, (await runtime.engine.submit(title=QUESTION)).task_id)
        assert str(task.status) == "completed", task.error
        (sub,) = await subtasks_of(runtime, task.id)
        report = (sub.validation or {})["hallucination"]
        assert report["suspect"] is True
        detectors = {f["detector"] for f in report["findings"]}
        assert {"temporal", "contradiction"} <= detectors
        recovery = report["recovery"]
        assert recovery["kept"] == "retry" and recovery["source"] == "retry by another model"
        assert recovery["report"]["confidence"] > report["confidence"]
        assert sub.result == GOOD and task.result == GOOD
        validator = (sub.validation or {})["validator"]
        assert recovery["model"] not in ("aaa-executor-7b", validator)  # a third model answered again
        retry_prompts = [c.body["messages"][-1]["content"] for c in lmstudio.calls("/v1/chat/completions")
                         if RETRY_MARK in c.body["messages"][-1]["content"]]
        assert len(retry_prompts) == 1
        assert "is not a real date" in retry_prompts[0] and BAD not in retry_prompts[0]  # reasons, not the answer
        logged = [e["event"] for e in await events_of(runtime, task.id)]
        assert logged.count("hallucination.check") == 2 and "hallucination.recovery" in logged
        after = await metrics(runtime)
        assert after["aaa-executor-7b"].failures == before["aaa-executor-7b"].failures + 1
        assert after[recovery["model"]].successes >= 1
    finally:
        await stop(runtime)


async def test_a_looping_stream_is_cut_off_and_a_clean_answer_is_checked_without_recovery(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    lmstudio.script("aaa-executor-7b", family="qwen", responder=responder(answer=LOOP, recovery=LOOP))
    lmstudio.script("bbb-helper-3b", family="llama", responder=responder(answer=GOOD, recovery=GOOD))
    lmstudio.script("ccc-helper-2b", family="gemma", responder=responder(answer=GOOD, recovery=GOOD))
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        await favour(runtime, "aaa-executor-7b")
        task = await wait_task(runtime, (await runtime.engine.submit(title=QUESTION)).task_id)
        assert str(task.status) == "completed", task.error
        (sub,) = await subtasks_of(runtime, task.id)
        validation = sub.validation or {}
        executed = validation["executor_answer"]
        assert executed.count("The tower is tall.") < 60  # stopped while streaming, not after 60 repeats
        report = validation["hallucination"]
        assert report["suspect"] is True
        assert report["findings"][0]["detector"] == "repetition"
        # The validator's answer differs, so the tie-break (not recovery) settles it, and picks GOOD.
        assert "recovery" not in report
        assert validation["tiebreak"]["outcome"] == "validator"
        assert sub.result == GOOD
        judged = [c.body["messages"][-1]["content"] for c in lmstudio.calls("/v1/chat/completions")
                  if "ALTERNATIVE:" in c.body["messages"][-1]["content"]]
        assert judged and all("possible hallucination" in prompt for prompt in judged)
    finally:
        await stop(runtime)


async def test_with_one_model_a_suspect_answer_is_kept_but_marked_and_the_thread_says_why(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    lmstudio.script("only-model", responder=responder(answer=BAD, recovery=BAD))
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    console, threads = await console_for(runtime, tmp_path)
    try:
        await console.submit(f"/task {QUESTION}")
        await wait_for_text(console, "Final answer")
        texts = "\n".join(m.text for m in console.messages)
        assert "Possible hallucination" in texts and "is not a real date" in texts
        assert "No other model is available" in texts
        assert runtime.engine is not None
        async with runtime.sessions() as session:
            sub = (await session.scalars(select(ExecutionLog.subtask_id).where(
                ExecutionLog.event == "hallucination.check"))).first()
        assert sub is not None
    finally:
        await close(console, threads, runtime)


async def test_an_answer_that_drifts_from_the_earlier_answer_in_the_conversation_is_flagged(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    first, drifted = ("The Eiffel Tower is 330 metres tall and stands in Paris.",
                      "The Eiffel Tower is 120 metres tall and stands in Lyon.")
    for key, family in (("aaa-executor-7b", "qwen"), ("bbb-helper-3b", "llama")):
        lmstudio.script(key, family=family, responder=responder(answer=first, recovery=first))
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        async with runtime.sessions() as session, session.begin():
            conversation = ChatConversation(platform="console", channel_id="c1", thread_id="t1")
            session.add(conversation)
            await session.flush()
            conversation_id = conversation.id
        question = "Follow-up on #1: how tall is the Eiffel Tower?"
        earlier = await wait_task(runtime, (await runtime.engine.submit(
            title=question, single_step=True, conversation_id=conversation_id)).task_id)
        assert earlier.result == first
        (sub,) = await subtasks_of(runtime, earlier.id)
        assert not any(f["detector"] == "drift" for f in (sub.validation or {})["hallucination"]["findings"])
        for key, family in (("aaa-executor-7b", "qwen"), ("bbb-helper-3b", "llama")):
            lmstudio.script(key, family=family, responder=responder(answer=drifted, recovery=drifted))
        later = await wait_task(runtime, (await runtime.engine.submit(
            title=question, single_step=True, conversation_id=conversation_id)).task_id)
        (sub,) = await subtasks_of(runtime, later.id)
        drift = [f for f in (sub.validation or {})["hallucination"]["findings"] if f["detector"] == "drift"]
        assert drift and drift[0]["evidence"]["earlier_answer"] == first
        # Outside the conversation the same question has no earlier answer to drift from.
        alone = await wait_task(runtime, (await runtime.engine.submit(title=question, single_step=True)).task_id)
        (sub,) = await subtasks_of(runtime, alone.id)
        assert not any(f["detector"] == "drift" for f in (sub.validation or {})["hallucination"]["findings"])
    finally:
        await stop(runtime)
