"""Workflows run from their stored steps against a local LM Studio peer: no planner call, the steps
in dependency order, templates rendered from the run's input, bad graphs failing with a reason
(SQLite and MariaDB)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bot.db.models import AiRole, AiTemplate, AiWorkflow, SpecializedAi, Task
from bot.engine.orchestrator import KIND_PLAN
from bot.engine.queue import JobSpec
from bot.engine.runtime import EngineRuntime
from bot.engine.workflows import WorkflowError, run_variables
from tests.fakes import FakeLMStudio
from tests.integration.test_engine import lmstudio, start_engine, stop, subtasks_of, verdict, wait_task

__all__ = ["lmstudio"]
NOTE = "Back up nightly and test restores monthly."


def planner_calls(fake: FakeLMStudio) -> list[Any]:
    return [c for c in fake.calls("/v1/chat/completions")
            if (c.body.get("response_format") or {}).get("json_schema", {}).get("schema", {}).get("title") == "Plan"]


def executor_prompts(fake: FakeLMStudio) -> list[str]:
    """Each subtask's prompt once (the validator's own answer gets the same one), in arrival order."""
    prompts = [str(c.body["messages"][-1]["content"]) for c in fake.calls("/v1/chat/completions")]
    return list(dict.fromkeys(p for p in prompts if p.startswith("Overall task:")))


async def add_workflow(runtime: EngineRuntime, steps: list[dict[str, Any]]) -> int:
    async with runtime.sessions() as session, session.begin():
        workflow = AiWorkflow(name=f"wf-{uuid.uuid4().hex[:8]}", description="test", definition={"steps": steps})
        session.add(workflow)
        await session.flush()
        return workflow.id


async def writer_and_template(runtime: EngineRuntime) -> tuple[int, int]:
    async with runtime.sessions() as session, session.begin():
        writer = await session.scalar(select(SpecializedAi).where(SpecializedAi.role == AiRole.WRITER).limit(1))
        assert writer is not None
        template = AiTemplate(name=f"outline-{uuid.uuid4().hex[:6]}", category="writing", body=
                              "Outline a short note about {topic} for {audience}.", variables={})
        session.add(template)
        await session.flush()
        return writer.id, template.id


def models(fake: FakeLMStudio) -> None:
    for name, family in (("qwen2.5-7b-instruct", "qwen"), ("llama-3.2-3b-instruct", "llama")):
        fake.script(name, answer=NOTE, family=family, structured={"Verdict": verdict(94, "approve")})


async def test_a_three_step_workflow_runs_its_steps_in_order_without_a_planner(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    models(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None and runtime.bus is not None
        writer_id, template_id = await writer_and_template(runtime)
        workflow_id = await add_workflow(runtime, [
            {"name": "outline", "template_id": template_id, "expected_output": "five bullet points"},
            {"name": "draft", "specialized_ai_id": writer_id, "instructions": "Write the note from the outline.",
             "depends_on": ["outline"]},
            {"name": "polish", "specialized_ai_id": writer_id, "instructions": "Tighten the wording.",
             "depends_on": ["draft"], "category": "summarise"},
        ])
        with runtime.bus.subscribe(topics={"task"}, maxsize=10_000) as events:
            submitted = await runtime.engine.submit(
                title="backup note", description='{"topic": "backups", "audience": "operators"}',
                workflow_id=workflow_id)
            task = await wait_task(runtime, submitted.task_id)
            planned = []
            while events.pending():
                event = await events.get()
                if event.kind == "task.planned":
                    planned.append(event.payload)
        assert str(task.status) == "completed", task.error
        assert task.workflow_id == workflow_id and task.origin["workflow"]["id"] == workflow_id
        assert not planner_calls(lmstudio)  # the stored steps are the plan
        subs = await subtasks_of(runtime, task.id)
        assert [(s.seq, s.title, s.depends_on) for s in subs] == [(1, "outline", []), (2, "draft", [1]),
                                                                   (3, "polish", [2])]
        assert [s.category for s in subs] == ["writing", "writing", "summarise"]
        assert subs[0].expected_output == "five bullet points"
        assert subs[0].description == "Outline a short note about backups for operators."
        assert subs[1].specialized_ai_id == writer_id
        assert all(str(s.status) == "completed" for s in subs)
        assert subs[0].finished_at is not None and subs[1].started_at is not None
        assert subs[0].finished_at <= subs[1].started_at and subs[1].finished_at <= subs[2].started_at  # type: ignore[operator]
        prompts = executor_prompts(lmstudio)
        assert "Outline a short note about backups for operators." in prompts[0]
        assert "Your subtask (2): draft" in prompts[1] and NOTE in prompts[1]  # step 1's result is its context
        assert "Your subtask (3): polish" in prompts[2]
        assert planned and planned[0]["planner"].startswith("workflow wf-")
        assert [s["id"] for s in planned[0]["subtasks"]] == [1, 2, 3]
    finally:
        await stop(runtime)


async def test_a_run_the_workflow_cannot_do_is_refused_at_once(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    models(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        writer_id, template_id = await writer_and_template(runtime)
        missing_variable = await add_workflow(runtime, [{"name": "outline", "template_id": template_id}])
        with pytest.raises(WorkflowError, match="needs values for: audience, topic"):
            await runtime.engine.submit(title="x", description="just text", workflow_id=missing_variable)
        cyclic = await add_workflow(runtime, [
            {"name": "a", "specialized_ai_id": writer_id, "instructions": "A", "depends_on": ["b"]},
            {"name": "b", "specialized_ai_id": writer_id, "instructions": "B", "depends_on": ["a"]},
        ])
        with pytest.raises(WorkflowError, match="dependency cycle: a -> b -> a"):
            await runtime.engine.submit(title="x", workflow_id=cyclic)
        with pytest.raises(WorkflowError, match="no workflow 999999"):
            await runtime.engine.submit(title="x", workflow_id=999_999)
        async with runtime.sessions() as session:
            assert (await session.scalars(select(Task))).first() is None  # nothing was created
    finally:
        await stop(runtime)


@pytest.mark.parametrize("damage", ["cycle", "unknown_dependency", "deleted"])
async def test_a_workflow_broken_after_the_run_was_created_fails_the_task_with_the_reason(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path, damage: str
) -> None:
    models(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None and runtime.queue is not None
        writer_id, _ = await writer_and_template(runtime)
        workflow_id = await add_workflow(runtime, [
            {"name": "a", "specialized_ai_id": writer_id, "instructions": "A"}])
        from bot.engine.workflows import new_workflow_task

        async with runtime.sessions() as session, session.begin():  # a run created but not yet planned
            task = await new_workflow_task(session, workflow_id=workflow_id, input_text="go")
            task_id = task.id
        broken: dict[str, Any] = {
            "cycle": {"steps": [{"name": "a", "specialized_ai_id": writer_id, "instructions": "A",
                                 "depends_on": ["a"]}]},
            "unknown_dependency": {"steps": [{"name": "a", "specialized_ai_id": writer_id, "instructions": "A",
                                              "depends_on": ["ghost"]}]},
        }
        async with runtime.sessions() as session, session.begin():
            if damage == "deleted":
                await session.delete(await session.get(AiWorkflow, workflow_id))
            else:
                await session.execute(update(AiWorkflow).where(AiWorkflow.id == workflow_id)
                                      .values(definition=broken[damage]))
        await runtime.queue.enqueue(JobSpec(kind=KIND_PLAN, idempotency_key=f"task:{task_id}:plan",
                                            payload={"task_id": task_id}, task_id=task_id))
        task = await wait_task(runtime, task_id)
        expected = {"cycle": "dependency cycle: a -> a", "unknown_dependency": "unknown step(s) 'ghost'",
                    "deleted": "was deleted before this run was planned"}[damage]
        assert str(task.status) == "failed"
        assert task.error is not None and expected in task.error
        assert await subtasks_of(runtime, task_id) == []
        assert not planner_calls(lmstudio) and not executor_prompts(lmstudio)
    finally:
        await stop(runtime)


def test_run_variables_take_json_object_keys_and_keep_the_text() -> None:
    assert run_variables("plain words") == {"input": "plain words"}
    assert run_variables('{"n": 3, "topic": "x"}') == {"input": '{"n": 3, "topic": "x"}', "n": "3", "topic": "x"}
    assert run_variables("{not json") == {"input": "{not json"}
    assert run_variables("[1, 2]") == {"input": "[1, 2]"}
