"""/task and /ask through the console against a local LM Studio peer: the thread shows the plan,
each subtask's streamed output, the verdict and the final answer (SQLite and MariaDB)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bot.commands.threads import TaskThreads
from bot.commands.wiring import build_dispatcher, console_user
from bot.db.models import Task
from bot.engine.runtime import EngineRuntime
from bot.platforms.console import ConsolePlatform
from tests.fakes import FakeLMStudio
from tests.integration.test_engine import PARIS, lmstudio, plan, start_engine, step, stop, verdict

__all__ = ["lmstudio"]


async def console_for(runtime: EngineRuntime, tmp_path: Path) -> tuple[ConsolePlatform, TaskThreads]:
    assert runtime.engine is not None
    _registry, dispatcher = build_dispatcher(settings=runtime.settings, sessions=runtime.sessions,
                                             engine=runtime.engine, bus=runtime.bus)
    threads = dispatcher.services.components["threads"]
    assert isinstance(threads, TaskThreads)
    _user, sender = await console_user(runtime.sessions, username=None)
    console = ConsolePlatform(sink=dispatcher.handle_event, user_id=sender.user_id, files_dir=tmp_path / "files")
    await console.start()
    return console, threads


async def close(console: ConsolePlatform, threads: TaskThreads, runtime: EngineRuntime) -> None:
    """Let the thread followers record the ending before the database goes: a follower writing
    after `dispose()` opens a connection in a fresh pool that nothing ever closes."""
    await console.stop()
    await threads.wait_idle(limit_s=10)
    await threads.stop()
    await stop(runtime)


async def wait_for_text(console: ConsolePlatform, needle: str, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(needle in m.text for m in console.messages):
        assert time.monotonic() < deadline, [m.text for m in console.messages]
        await asyncio.sleep(0.05)


async def test_task_opens_a_thread_with_plan_output_verdict_and_answer(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    for name, family in (("qwen2.5-7b-instruct", "qwen"), ("llama-3.2-3b-instruct", "llama")):
        lmstudio.script(name, answer=PARIS, family=family,
                        structured={"Plan": plan(step(1, "capital of France")), "Verdict": verdict(93, "approve")})
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    console, threads = await console_for(runtime, tmp_path)
    try:
        replies = await console.submit("/task What is the capital of France?")
        assert any("queued" in reply for reply in replies)
        await wait_for_text(console, "Final answer")
        thread = [m for m in console.messages if m.thread_id is not None]
        texts = "\n".join(m.text for m in thread)
        assert "Plan by" in texts
        assert "capital of France" in texts
        assert PARIS in texts  # the subtask's streamed output
        assert "score 93" in texts and "divergence" in texts
        anchors = {m.thread_id for m in thread}
        assert len(anchors) == 1  # everything in the task's one thread
    finally:
        await close(console, threads, runtime)


async def test_ask_streams_an_answer_and_its_verdict_in_portuguese(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    for name, family in (("qwen2.5-7b-instruct", "qwen"), ("llama-3.2-3b-instruct", "llama")):
        lmstudio.script(name, answer="A capital da França é Paris.", family=family,
                        structured={"Verdict": verdict(90, "approve")})
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    console, threads = await console_for(runtime, tmp_path)
    console.language = "pt-BR"
    try:
        async with runtime.sessions() as session, session.begin():
            from sqlalchemy import update

            from bot.db.models import User

            await session.execute(update(User).values(language="pt-BR"))
        replies = await console.submit("/ask Qual é a capital da França?")
        joined = "\n".join(replies)
        assert "Paris" in joined
        assert "Verificado por" in joined
        async with runtime.sessions() as session:
            task = await session.get(Task, 1)
        assert task is not None and str(task.status) == "completed"
        # No planner call: /ask is one cross-validated step.
        assert not [c for c in lmstudio.calls("/v1/chat/completions")
                    if (c.body.get("response_format") or {}).get("json_schema", {}).get("schema", {}).get("title")
                    == "Plan"]
    finally:
        await close(console, threads, runtime)


async def test_an_unknown_console_user_cannot_run_tasks(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    lmstudio.script("m", answer=PARIS)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    _registry, dispatcher = build_dispatcher(settings=runtime.settings, sessions=runtime.sessions,
                                             engine=runtime.engine, bus=runtime.bus)
    stranger = ConsolePlatform(sink=dispatcher.handle_event, user_id="nobody-linked", files_dir=tmp_path / "f")
    await stranger.start()
    try:
        replies = await stranger.submit("/task steal the GPU")
        assert any("don't know you" in reply for reply in replies)
        async with runtime.sessions() as session:
            assert await session.get(Task, 1) is None
    finally:
        await stranger.stop()
        await stop(runtime)
