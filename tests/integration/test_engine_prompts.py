"""Which prompt a subtask runs with: the specialised AI a workflow step names, and the engine's cached
copy of the prompts and instructions (SQLite and MariaDB)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from bot.db.engine import create_engine, session_factory
from bot.db.models import (
    AiModel,
    AiRole,
    Instruction,
    InstructionScope,
    SpecializedAi,
    Task,
    TaskStatus,
)
from bot.engine.prompts import PromptCache, instructions_for, role_prompt
from tests.fakes import FakeLMStudio
from tests.integration.test_engine import lmstudio, start_engine, stop, subtasks_of, wait_task
from tests.integration.test_workflows import add_workflow, models

__all__ = ["lmstudio"]
LAWYER = "You are Lex, a contracts lawyer. Quote the clause you rely on. [lex-7f3a]"


def streamed_requests(fake: FakeLMStudio) -> list[dict[str, Any]]:
    """The executors' requests (the executor streams; the validator's own answer does not)."""
    return [c.body for c in fake.calls("/v1/chat/completions") if c.body.get("stream")]


async def test_a_workflow_step_runs_with_the_specialised_ai_it_names(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    models(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        async with runtime.sessions() as session, session.begin():
            preferred = await session.scalar(select(AiModel.id).where(AiModel.model_key == "llama-3.2-3b-instruct"))
            lawyer = SpecializedAi(name=f"lex-{uuid.uuid4().hex[:6]}", role=AiRole.WRITER, system_prompt=LAWYER,
                                   category="writing", temperature=0.65, max_tokens=321, preferred_model_id=preferred)
            session.add(lawyer)
            await session.flush()
            lawyer_id = lawyer.id
        # "analysis" alone would run as the analyst: the step's own AI must win over its category.
        workflow_id = await add_workflow(runtime, [
            {"name": "review", "specialized_ai_id": lawyer_id, "category": "analysis",
             "instructions": "Review the indemnity clause."},
        ])
        task = await wait_task(runtime, (await runtime.engine.submit(
            title="contract review", description="the contract", workflow_id=workflow_id)).task_id)
        assert str(task.status) == "completed", task.error
        (sub,) = await subtasks_of(runtime, task.id)
        assert sub.specialized_ai_id == lawyer_id and sub.category == "analysis"
        (request,) = streamed_requests(lmstudio)
        assert request["messages"][0] == {"role": "system", "content": LAWYER}
        assert request["temperature"] == 0.65
        assert request["max_tokens"] == 321
        assert request["model"] == "llama-3.2-3b-instruct"  # its preferred model
        assert sub.executor_model_id == preferred
    finally:
        await stop(runtime)


async def test_without_a_named_ai_the_category_role_executes(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    models(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    try:
        assert runtime.engine is not None
        async with runtime.sessions() as session:
            analyst = await role_prompt(session, AiRole.ANALYST)
        task = await wait_task(runtime, (await runtime.engine.submit(
            title="Which backup schedule is safer?", category="analysis", single_step=True)).task_id)
        assert str(task.status) == "completed", task.error
        (request,) = streamed_requests(lmstudio)
        assert str(request["messages"][0]["content"]).startswith(analyst.system_prompt)
    finally:
        await stop(runtime)


async def test_the_prompt_cache_reads_what_the_queries_read_and_keeps_it_for_its_ttl(migrated_db: str) -> None:
    engine = create_engine(migrated_db)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            open_task = Task(title="open", status=TaskStatus.RUNNING)
            ended_task = Task(title="ended", status=TaskStatus.COMPLETED)
            session.add_all([open_task, ended_task])
            await session.flush()
            session.add_all([
                Instruction(scope=InstructionScope.GLOBAL, text="Answer in English.", priority=1),
                Instruction(scope=InstructionScope.CATEGORY, category="code", text="Use type hints.", priority=5),
                Instruction(scope=InstructionScope.CATEGORY, category="writing", text="Be brief."),
                Instruction(scope=InstructionScope.TASK, task_id=open_task.id, text="Cite the RFC.", priority=9),
                Instruction(scope=InstructionScope.GLOBAL, text="Switched off.", is_active=False),
            ])
            open_id, ended_id = open_task.id, ended_task.id
        cache = PromptCache(ttl_s=3600)
        async with sessions() as session:
            for role in (AiRole.PLANNER, AiRole.REVIEWER, AiRole.CODER, AiRole.TIEBREAKER):
                assert await cache.role(session, role) == await role_prompt(session, role)
            for category, task_id in (("code", open_id), ("writing", None), (None, open_id), ("data", ended_id)):
                assert await cache.instructions(session, category=category, task_id=task_id) == \
                    await instructions_for(session, category=category, task_id=task_id)
            assert await cache.instructions(session, category="code", task_id=open_id) == \
                ["Cite the RFC.", "Use type hints.", "Answer in English."]
            coder = await role_prompt(session, AiRole.CODER)
            assert coder.ai_id is not None and await cache.ai(session, coder.ai_id) == coder
        async with sessions() as session, session.begin():
            await session.execute(update(SpecializedAi).where(SpecializedAi.id == coder.ai_id).values(
                system_prompt="edited"))
        async with sessions() as session:
            # Within the TTL the snapshot stands (bounded staleness); once it is refreshed, the edit is read.
            assert (await cache.role(session, AiRole.CODER)).system_prompt == coder.system_prompt
            cache.invalidate()
            assert (await cache.role(session, AiRole.CODER)).system_prompt == "edited"
        async with sessions() as session, session.begin():
            await session.execute(update(SpecializedAi).where(SpecializedAi.id == coder.ai_id).values(is_active=False))
        async with sessions() as session:
            cache.invalidate()
            assert await cache.ai(session, coder.ai_id) is None  # switched off: the category's role runs instead
    finally:
        await engine.dispose()
