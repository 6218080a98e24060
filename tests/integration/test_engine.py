"""The engine end to end against a local LM Studio peer whose models play planner, executor,
validator and tie-breaker: real HTTP, real queue, real database (SQLite and MariaDB)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.db.engine import create_engine, session_factory
from bot.db.models import AiModel, AiProvider, AiQualityMetric, ExecutionLog, Subtask, Task
from bot.engine.embeddings import LexicalEmbedder
from bot.engine.runtime import EngineRuntime
from bot.events import EventBus
from bot.settings import load_settings
from tests.fakes import FakeLMStudio

PARIS = "The capital of France is Paris."
SYDNEY = "The capital of Australia is Sydney."
CANBERRA = "Canberra is the capital of Australia."


def plan(*subtasks: dict[str, Any]) -> dict[str, Any]:
    return {"goal": "answer", "subtasks": list(subtasks), "questions": [], "assumptions": []}


def step(seq: int, title: str, depends_on: tuple[int, ...] = (), category: str = "research") -> dict[str, Any]:
    return {"seq": seq, "title": title, "description": f"Answer: {title}", "category": category,
            "depends_on": list(depends_on), "expected_output": "one sentence", "priority": 0}


def verdict(score: int, decision: str, *issues: str) -> dict[str, Any]:
    return {"score": score, "verdict": decision, "issues": [{"severity": "major", "problem": i} for i in issues],
            "summary": "review"}


def judge_prefers(word: str) -> Callable[[dict[str, Any]], str]:
    """A judge that reads the RESULT and ALTERNATIVE and picks the one containing `word`."""

    def respond(body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        if "ALTERNATIVE:" not in text:
            return "I judge only pairs."
        result = text.split("RESULT:", 1)[1].split("REVIEW:", 1)[0]
        return json.dumps({"winner": "result" if word in result else "alternative", "score": 90,
                           "verdict": "approve", "reasons": [f"it says {word}"], "merged_result": None})

    return respond


def shown_pair(prompt: str) -> tuple[str, str]:
    """(RESULT, ALTERNATIVE) as a judge saw them."""
    result = prompt.split("RESULT:\n", 1)[1].split("\n\nREVIEW:", 1)[0]
    alternative = prompt.split("ALTERNATIVE:\n", 1)[1].split("\n\nWhich", 1)[0]
    return result, alternative


@pytest.fixture
async def lmstudio() -> AsyncIterator[FakeLMStudio]:
    async with FakeLMStudio() as server:
        yield server


async def start_engine(db_url: str, fake: FakeLMStudio, tmp_path: Path, *, name: str = "test",
                       run_worker: bool = True, **engine: Any) -> EngineRuntime:
    """An engine runtime on `db_url` routed to `fake`; `name` tells several on one database apart."""
    settings = load_settings(environ={"ORCH_DATA_DIR": str(tmp_path / "data"), "ORCH_DATABASE_URL": db_url,
                                      "ORCH_LMSTUDIO__BASE_URL": fake.url},
                             engine={"checkpoint_interval_s": 0.05, **engine})
    db = create_engine(db_url)
    sessions = session_factory(db)
    async with sessions() as session, session.begin():
        await session.execute(update(AiProvider).where(AiProvider.name == "LM Studio").values(base_url=fake.url))
    # The lexical embedder keeps these tests fast; the formula with MiniLM is tested in test_divergence.
    runtime = EngineRuntime(settings=settings, db_engine=db, sessions=sessions, bus=EventBus(),
                            worker_id=f"{name}-{time.monotonic_ns()}", embedder=LexicalEmbedder())
    await runtime.start(run_worker=run_worker)
    return runtime


async def wait_task(runtime: EngineRuntime, task_id: int, *, timeout: float = 60) -> Task:
    deadline = time.monotonic() + timeout
    while True:
        async with runtime.sessions() as session:
            task = await session.get(Task, task_id)
            assert task is not None
            if str(task.status) in ("completed", "failed", "cancelled"):
                return task
        assert time.monotonic() < deadline, f"task {task_id} still {task.status}"
        await asyncio.sleep(0.05)


async def stop(runtime: EngineRuntime) -> None:
    await runtime.stop()
    await runtime.db_engine.dispose()


async def subtasks_of(runtime: EngineRuntime, task_id: int) -> list[Subtask]:
    async with runtime.sessions() as session:
        return list((await session.scalars(select(Subtask).where(Subtask.task_id == task_id)
                                           .order_by(Subtask.seq))).all())


async def model_keys(runtime: EngineRuntime) -> dict[int, str]:
    async with runtime.sessions() as session:
        return {m.id: m.model_key for m in (await session.scalars(select(AiModel))).all()}


async def metrics(runtime: EngineRuntime) -> dict[str, AiQualityMetric]:
    keys = await model_keys(runtime)
    async with runtime.sessions() as session:
        rows = (await session.scalars(select(AiQualityMetric).where(AiQualityMetric.category != "planning"))).all()
        return {keys[r.model_id]: r for r in rows}


async def test_agreeing_models_validate_without_tie_break(migrated_db: str, lmstudio: FakeLMStudio,
                                                          tmp_path: Path) -> None:
    for name, family in (("qwen2.5-7b-instruct", "qwen"), ("llama-3.2-3b-instruct", "llama")):
        lmstudio.script(name, answer=PARIS, family=family,
                        structured={"Plan": plan(step(1, "capital of France")),
                                    "Verdict": verdict(95, "approve")})
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        assert runtime.bus is not None
        with runtime.bus.subscribe(topics={"task"}, maxsize=10_000) as events:
            submitted = await runtime.engine.submit(title="What is the capital of France?")
            task = await wait_task(runtime, submitted.task_id)
            kinds = []
            while events.pending():
                kinds.append((await events.get()).kind)
        assert str(task.status) == "completed", task.error
        assert task.result == PARIS
        (sub,) = await subtasks_of(runtime, task.id)
        assert sub.executor_model_id != sub.validator_model_id
        assert sub.tiebreaker_model_id is None
        assert sub.validation is not None and sub.validation["status"] == "validated"
        assert sub.divergence_pct is not None and sub.divergence_pct <= 20
        assert sub.validation_score == 95
        keys = await model_keys(runtime)
        measured = await metrics(runtime)
        executor = measured[keys[sub.executor_model_id or 0]]
        assert (executor.runs, executor.successes, executor.validations) == (1, 1, 1)
        assert executor.mean_validation_score == 95
        assert executor.rank == 1
        async with runtime.sessions() as session:
            query = select(ExecutionLog.event).where(ExecutionLog.task_id == task.id)
            logged = set((await session.scalars(query)).all())
        assert {"plan", "execute", "reference", "verdict", "divergence"} <= logged
        for kind in ("task.created", "task.planned", "subtask.token", "subtask.verdict", "task.done"):
            assert kind in kinds
        # The validator wrote its own answer without seeing the executor's.
        reference_calls = [c for c in lmstudio.calls("/v1/chat/completions")
                           if "response_format" not in c.body and PARIS not in json.dumps(c.body["messages"])]
        assert reference_calls
    finally:
        await stop(runtime)


async def test_divergence_calls_a_third_model_that_judges_twice_swapped(migrated_db: str, lmstudio: FakeLMStudio,
                                                                       tmp_path: Path) -> None:
    common = {"Plan": plan(step(1, "capital of Australia")), "Verdict": verdict(30, "reject", "wrong capital")}
    lmstudio.script("aaa-wrong-7b", answer=SYDNEY, family="qwen", structured=common)
    lmstudio.script("bbb-right-3b", answer=CANBERRA, family="llama", structured=common)
    lmstudio.script("ccc-judge-9b", answer=CANBERRA, family="gemma", structured=common,
                    responder=judge_prefers("Canberra"))
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        task = await wait_task(runtime, (await runtime.engine.submit(title="Capital of Australia?")).task_id)
        assert str(task.status) == "completed", task.error
        (sub,) = await subtasks_of(runtime, task.id)
        keys = await model_keys(runtime)
        executor, validator = keys[sub.executor_model_id or 0], keys[sub.validator_model_id or 0]
        judge = keys[sub.tiebreaker_model_id or 0]
        assert len({executor, validator, judge}) == 3
        assert sub.divergence_pct is not None and sub.divergence_pct > 20
        tiebreak = (sub.validation or {})["tiebreak"]
        assert tiebreak["picks"][0] == tiebreak["picks"][1]
        judge_calls = [c for c in lmstudio.calls("/v1/chat/completions") if c.body.get("model") == judge
                       and "ALTERNATIVE:" in c.body["messages"][-1]["content"]]
        assert len(judge_calls) == 2
        first, second = (shown_pair(c.body["messages"][-1]["content"]) for c in judge_calls)
        assert first == (second[1], second[0])  # the same two answers, in opposite positions
        assert task.result == CANBERRA
        measured = await metrics(runtime)
        if executor == "aaa-wrong-7b":
            assert tiebreak["outcome"] == "validator"
            assert measured[executor].tiebreaks_lost == 1 and measured[executor].successes == 0
            assert measured[validator].tiebreaks_won == 1
    finally:
        await stop(runtime)


async def test_independent_calls_of_a_subtask_are_in_flight_together(migrated_db: str, lmstudio: FakeLMStudio,
                                                                      tmp_path: Path) -> None:
    """The reference answer and the verdict go out at once, and so do the two judgements."""
    delay = 0.5  # every answer takes this long: serial calls would arrive at least this far apart
    common = {"Plan": plan(step(1, "capital of Australia")), "Verdict": verdict(30, "reject", "wrong capital")}
    lmstudio.script("aaa-wrong-7b", answer=SYDNEY, family="qwen", structured=common, first_token_delay_s=delay)
    lmstudio.script("bbb-right-3b", answer=CANBERRA, family="llama", structured=common, first_token_delay_s=delay)
    lmstudio.script("ccc-judge-9b", answer=CANBERRA, family="gemma", structured=common,
                    responder=judge_prefers("Canberra"), first_token_delay_s=delay)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        task = await wait_task(runtime, (await runtime.engine.submit(title="Capital of Australia?",
                                                                     single_step=True)).task_id)
        assert str(task.status) == "completed", task.error
        (sub,) = await subtasks_of(runtime, task.id)
        keys = await model_keys(runtime)
        validator, judge = keys[sub.validator_model_id or 0], keys[sub.tiebreaker_model_id or 0]
        calls = lmstudio.calls("/v1/chat/completions")
        checking = [c for c in calls if c.body.get("model") == validator and "ALTERNATIVE:" not in
                    c.body["messages"][-1]["content"]]
        assert sorted("response_format" in c.body for c in checking) == [False, True]  # reference, verdict
        judging = [c for c in calls if c.body.get("model") == judge and "ALTERNATIVE:" in
                   c.body["messages"][-1]["content"]]
        assert len(judging) == 2
        for pair in (checking, judging):
            assert abs(pair[0].at - pair[1].at) < delay / 2, [c.at for c in pair]
        async with runtime.sessions() as session:
            stored = set((await session.scalars(select(ExecutionLog.event).where(ExecutionLog.task_id == task.id)
                                                )).all())
        assert {"execute", "reference", "verdict", "judge"} <= stored
    finally:
        await stop(runtime)


async def test_a_provider_with_one_slot_gets_one_call_at_a_time(migrated_db: str, lmstudio: FakeLMStudio,
                                                                 tmp_path: Path) -> None:
    """`ai_providers.max_concurrency` caps the engine's calls: the validator's two calls then queue."""
    delay = 0.4
    for name, family in (("qwen2.5-7b-instruct", "qwen"), ("llama-3.2-3b-instruct", "llama")):
        lmstudio.script(name, answer=PARIS, family=family, structured={"Verdict": verdict(95, "approve")},
                        first_token_delay_s=delay)
    db = create_engine(migrated_db)
    async with session_factory(db)() as session, session.begin():
        await session.execute(update(AiProvider).values(max_concurrency=1))
    await db.dispose()
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        task = await wait_task(runtime, (await runtime.engine.submit(title="Capital of France?",
                                                                     single_step=True)).task_id)
        assert str(task.status) == "completed", task.error
        arrivals = sorted(c.at for c in lmstudio.calls("/v1/chat/completions"))
        assert len(arrivals) == 3  # execute, reference, verdict
        assert all(later - earlier >= delay * 0.9 for earlier, later in itertools.pairwise(arrivals))
    finally:
        await stop(runtime)


async def test_position_bias_is_a_tie_and_the_policy_decides(migrated_db: str, lmstudio: FakeLMStudio,
                                                             tmp_path: Path) -> None:
    always_first = json.dumps({"winner": "result", "score": 70, "verdict": "approve", "reasons": ["first"],
                               "merged_result": None})
    common = {"Plan": plan(step(1, "capital of Australia")), "Verdict": verdict(30, "reject", "wrong"),
              "Judgement": json.loads(always_first)}
    lmstudio.script("aaa-wrong-7b", answer=SYDNEY, family="qwen", structured=common)
    lmstudio.script("bbb-right-3b", answer=CANBERRA, family="llama", structured=common)
    lmstudio.script("ccc-judge-9b", answer=CANBERRA, family="gemma", structured=common)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path, tie_policy="keep_executor_flagged")
    try:
        assert runtime.engine is not None
        task = await wait_task(runtime, (await runtime.engine.submit(title="Capital of Australia?")).task_id)
        (sub,) = await subtasks_of(runtime, task.id)
        validation = sub.validation or {}
        assert validation["tiebreak"]["outcome"] == "executor"
        assert validation["tiebreak"]["policy"] == "keep_executor_flagged"
        assert validation["disputed"] is True
        assert "position bias" in validation["tiebreak"]["reason"]
        keys = await model_keys(runtime)
        assert task.result == (SYDNEY if keys[sub.executor_model_id or 0] == "aaa-wrong-7b" else CANBERRA)
    finally:
        await stop(runtime)


async def test_a_single_model_is_marked_unvalidated_never_approved(migrated_db: str, lmstudio: FakeLMStudio,
                                                                   tmp_path: Path) -> None:
    lmstudio.script("only-model", answer=PARIS, structured={"Plan": plan(step(1, "capital"))})
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        task = await wait_task(runtime, (await runtime.engine.submit(title="Capital of France?")).task_id)
        (sub,) = await subtasks_of(runtime, task.id)
        assert str(task.status) == "completed"
        validation = dict(sub.validation or {})
        report = validation.pop("hallucination")
        assert validation == {"status": "unvalidated", "reason": "no second model is available to validate"}
        assert report["suspect"] is False and 0 <= report["confidence"] <= 100  # checked even with one model
        assert sub.validator_model_id is None and sub.validation_score is None
    finally:
        await stop(runtime)


async def test_malformed_plan_is_sent_back_with_the_error(migrated_db: str, lmstudio: FakeLMStudio,
                                                          tmp_path: Path) -> None:
    plans = iter(["this is not a plan", json.dumps(plan(step(1, "a"), step(2, "b", depends_on=(1,))))])

    def planner(body: dict[str, Any]) -> str:
        if "response_format" in body:
            title = body["response_format"]["json_schema"]["schema"]["title"]
            if title == "Plan":
                return next(plans)
            return json.dumps(verdict(90, "approve"))
        return PARIS

    lmstudio.script("m-one", family="qwen", responder=planner)
    lmstudio.script("m-two", answer=PARIS, family="llama", structured={"Verdict": verdict(90, "approve"),
                                                                        "Plan": plan(step(1, "x"))})
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        task = await wait_task(runtime, (await runtime.engine.submit(title="Two steps")).task_id)
        assert str(task.status) == "completed", task.error
        plan_calls = [c for c in lmstudio.calls("/v1/chat/completions")
                      if c.body.get("response_format", {}).get("json_schema", {}).get("schema", {}).get("title")
                      == "Plan"]
        assert len(plan_calls) == 2
        assert "invalid" in plan_calls[1].body["messages"][-1]["content"]
        subs = await subtasks_of(runtime, task.id)
        assert [s.seq for s in subs] == [1, 2] and all(str(s.status) == "completed" for s in subs)
        # The second subtask saw the first one's result as context.
        execute_calls = [c for c in lmstudio.calls("/v1/chat/completions") if c.body.get("stream")]
        assert any("Results of the subtasks this one depends on" in json.dumps(c.body) for c in execute_calls)
    finally:
        await stop(runtime)


async def test_unplannable_task_fails_with_a_clear_reason(migrated_db: str, lmstudio: FakeLMStudio,
                                                          tmp_path: Path) -> None:
    garbage = {"Plan": {"nonsense": True}}
    lmstudio.script("m-one", answer="x", structured=garbage)
    lmstudio.script("m-two", answer="y", structured=garbage)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        task = await wait_task(runtime, (await runtime.engine.submit(title="Anything")).task_id)
        assert str(task.status) == "failed"
        assert task.error is not None and "no valid plan" in task.error and "m-one" in task.error
        assert "m-two" in task.error  # the second planner model was tried too
    finally:
        await stop(runtime)


async def test_selection_prefers_the_model_that_has_been_right(migrated_db: str, lmstudio: FakeLMStudio,
                                                               tmp_path: Path) -> None:
    for name in ("aaa-model", "bbb-model"):
        lmstudio.script(name, answer=PARIS, structured={"Plan": plan(step(1, "capital")),
                                                        "Verdict": verdict(90, "approve")})
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        async with runtime.sessions() as session, session.begin():
            ids = {m.model_key: m.id for m in (await session.scalars(select(AiModel))).all()}
            session.add(AiQualityMetric(model_id=ids["bbb-model"], category="research", runs=40, successes=38,
                                        failures=2, success_rate=0.95, mean_time_ms=100, validations=40,
                                        mean_validation_score=92, tiebreaks_won=3, tiebreaks_lost=0,
                                        ratings_count=0))
            session.add(AiQualityMetric(model_id=ids["aaa-model"], category="research", runs=40, successes=12,
                                        failures=28, success_rate=0.3, mean_time_ms=100, validations=40,
                                        mean_validation_score=40, tiebreaks_won=0, tiebreaks_lost=3,
                                        ratings_count=0))
        assert runtime.engine is not None
        task = await wait_task(runtime, (await runtime.engine.submit(title="Capital?")).task_id)
        (sub,) = await subtasks_of(runtime, task.id)
        assert sub.executor_model_id == ids["bbb-model"]
        assert sub.validator_model_id == ids["aaa-model"]
        async with runtime.sessions() as session:
            runs = await session.scalar(select(AiQualityMetric.runs).where(
                AiQualityMetric.model_id == ids["bbb-model"], AiQualityMetric.category == "research"))
            total = await session.scalar(select(func.count()).select_from(AiQualityMetric))
        assert runs == 41
        assert total is not None and total >= 2
    finally:
        await stop(runtime)


async def test_smaller_models_are_chosen_while_vram_is_nearly_full(migrated_db: str, lmstudio: FakeLMStudio,
                                                                    tmp_path: Path) -> None:
    from bot.monitor.state import MonitorState

    common = {"Plan": plan(step(1, "capital")), "Verdict": verdict(90, "approve")}
    lmstudio.script("aaa-big-70b", answer=PARIS, size_bytes=40_000_000_000, structured=common)
    lmstudio.script("zzz-small-1b", answer=PARIS, size_bytes=800_000_000, structured=common)
    state = MonitorState(prefer_smaller_models=True, prefer_smaller_reason="VRAM 97 %")
    settings = load_settings(environ={"ORCH_DATA_DIR": str(tmp_path / "data"), "ORCH_DATABASE_URL": migrated_db,
                                      "ORCH_LMSTUDIO__BASE_URL": lmstudio.url})
    db = create_engine(migrated_db)
    sessions = session_factory(db)
    async with sessions() as session, session.begin():
        await session.execute(update(AiProvider).values(base_url=lmstudio.url))
    runtime = EngineRuntime(settings=settings, db_engine=db, sessions=sessions, bus=EventBus(),
                            embedder=LexicalEmbedder(), monitor_state=state)
    await runtime.start()
    try:
        assert runtime.engine is not None
        task = await wait_task(runtime, (await runtime.engine.submit(title="Capital?")).task_id)
        (sub,) = await subtasks_of(runtime, task.id)
        keys = await model_keys(runtime)
        assert keys[sub.executor_model_id or 0] == "zzz-small-1b"
        assert not state.models_in_use("LM Studio")  # every call released its model
    finally:
        await stop(runtime)


async def test_a_stream_dropped_midway_continues_on_another_server_without_repeating(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    long_answer = " ".join(f"fact{i}" for i in range(40)) + "."
    common = {"Plan": plan(step(1, "facts")), "Verdict": verdict(90, "approve")}
    lmstudio.script("qwen-7b", answer=long_answer, family="qwen", drop_after_tokens=6, structured=common)
    lmstudio.script("llama-3b", answer=long_answer, family="llama", structured=common)
    async with FakeLMStudio() as second:
        # One 503 first: whichever server the router tries first, the stream breaks on the first one
        # and the second one is asked to continue it.
        second.script("qwen-7b", answer=long_answer, family="qwen", structured=common, fail_status=503,
                      fail_times=1)
        db = create_engine(migrated_db)
        sessions = session_factory(db)
        async with sessions() as session, session.begin():
            await session.execute(update(AiProvider).values(base_url=lmstudio.url))
            session.add(AiProvider(name="LM Studio 2", kind="lmstudio", base_url=second.url, is_local=True))
        await db.dispose()
        runtime = await start_engine(migrated_db, lmstudio, tmp_path)
        try:
            assert runtime.engine is not None
            # History makes qwen the executor and llama the planner: only the executor's stream drops.
            async with runtime.sessions() as session, session.begin():
                ids = {m.model_key: m.id for m in (await session.scalars(select(AiModel))).all()}
                for key, category in (("qwen-7b", "research"), ("llama-3b", "planning")):
                    session.add(AiQualityMetric(model_id=ids[key], category=category, runs=20, successes=20,
                                                failures=0, success_rate=1.0, mean_time_ms=10, validations=20,
                                                mean_validation_score=95, tiebreaks_won=0, tiebreaks_lost=0,
                                                ratings_count=0))
            task = await wait_task(runtime, (await runtime.engine.submit(title="Forty facts")).task_id)
            assert str(task.status) == "completed", task.error
            (sub,) = await subtasks_of(runtime, task.id)
            assert sub.result == long_answer  # nothing lost, nothing repeated
            continued = [c for c in second.calls("/v1/chat/completions") if c.body.get("stream")
                         and c.body["messages"][-1]["role"] == "assistant"]
            assert continued, "the second server was not asked to continue the partial answer"
            assert long_answer.startswith(continued[0].body["messages"][-1]["content"])
        finally:
            await stop(runtime)
