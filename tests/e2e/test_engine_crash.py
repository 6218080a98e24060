"""SIGKILL the engine with 20 subtasks in flight: on restart every subtask completes exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.db.engine import create_engine, session_factory
from bot.db.models import AiProvider, AiQualityMetric, Subtask, SubtaskStatus, Task
from bot.db.models.queue import Job, JobCheckpoint
from bot.engine.orchestrator import Engine
from bot.engine.providers.router import Router
from bot.engine.queue import JobQueue
from bot.settings import EngineSettings
from tests.fakes import FakeLMStudio
from tests.fakes._base import schema_title

ROOT = Path(__file__).resolve().parents[2]
ANSWER = " ".join(f"word{i}" for i in range(60)) + "."
N = 20
PER_TASK = 10  # a plan holds at most 12 subtasks, so two tasks carry the twenty


def start_worker(db_url: str, fake: FakeLMStudio, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_DATABASE_URL=db_url, ORCH_DATA_DIR=str(data_dir), ORCH_LMSTUDIO__BASE_URL=fake.url,
               PYTHONPATH=str(ROOT), ENGINE_CONCURRENCY=str(N))
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "engine_worker_proc.py")], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def poll(condition, *, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_sigkill_with_20_subtasks_in_flight(migrated_db: str, tmp_path: Path) -> None:
    plan = {"goal": "g", "questions": [], "assumptions": [], "subtasks": [
        {"seq": i, "title": f"part {i}", "description": f"write part {i}", "category": "writing",
         "depends_on": [], "expected_output": "text"} for i in range(1, PER_TASK + 1)]}
    verdict = {"score": 92, "verdict": "approve", "issues": [], "summary": "fine"}
    async with FakeLMStudio() as fake:
        for name, family in (("alpha-7b", "qwen"), ("beta-3b", "llama")):
            fake.script(name, answer=ANSWER, family=family, token_delay_s=0.04,
                        structured={"Plan": plan, "Verdict": verdict})
        db = create_engine(migrated_db)
        sessions = session_factory(db)
        async with sessions() as session, session.begin():
            # A server with slots for every stream at once: twenty subtasks must be in flight together.
            await session.execute(update(AiProvider).values(base_url=fake.url, max_concurrency=2 * N))
        engine = Engine(session_factory=sessions, router=Router(), queue=JobQueue(db), settings=EngineSettings())
        task_ids = [(await engine.submit(title=f"ten parts #{n}")).task_id for n in range(N // PER_TASK)]
        log = tmp_path / "worker.log"
        worker = start_worker(migrated_db, fake, tmp_path / "data", log)
        try:
            async def many_in_flight() -> bool:
                async with sessions() as session:
                    running = await session.scalar(select(func.count()).select_from(Subtask).where(
                        Subtask.status == SubtaskStatus.RUNNING))
                    partials = await session.scalar(select(func.count()).select_from(JobCheckpoint).where(
                        JobCheckpoint.key == "output"))
                return (running or 0) >= 10 and (partials or 0) >= 5

            await poll(many_in_flight, timeout=120, what="10 subtasks streaming")
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            async with sessions() as session:
                unfinished = await session.scalar(select(func.count()).select_from(Subtask).where(
                    Subtask.status != SubtaskStatus.COMPLETED))
            assert unfinished and unfinished >= 10, "the kill came too late to prove anything"
            resumed_before = len([c for c in fake.calls("/v1/chat/completions")
                                  if c.body.get("messages", [{}])[-1].get("role") == "assistant"])

            worker = start_worker(migrated_db, fake, tmp_path / "data", log)

            async def finished() -> bool:
                async with sessions() as session:
                    statuses = (await session.scalars(select(Task.status))).all()
                    return len(statuses) == len(task_ids) and all(str(s) in ("completed", "failed") for s in statuses)

            try:
                await poll(finished, timeout=180, what="the tasks to finish after the restart")
            except AssertionError as err:
                raise AssertionError(f"{err}\nworker log:\n{log.read_text()[-4000:]}") from None
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        async with sessions() as session:
            tasks = list((await session.scalars(select(Task))).all())
            assert all(str(t.status) == "completed" for t in tasks), ([t.error for t in tasks],
                                                                      log.read_text()[-3000:])
            subtasks = list((await session.scalars(select(Subtask))).all())
            jobs = list((await session.scalars(select(Job))).all())
            runs = await session.scalar(select(func.sum(AiQualityMetric.runs)).where(
                AiQualityMetric.category == "writing"))
        assert len(subtasks) == N
        assert sorted((s.task_id, s.seq) for s in subtasks) == [(t, i) for t in task_ids
                                                                for i in range(1, PER_TASK + 1)]
        # Every result is the whole answer once: resumed streams continued, nothing repeated or lost.
        assert all(s.result == ANSWER for s in subtasks), [s.result for s in subtasks if s.result != ANSWER][:2]
        assert all(str(s.status) == "completed" for s in subtasks)
        assert len(jobs) == N + 2 * len(task_ids)  # a plan and a finish per task, a job per subtask
        assert all(str(j.status) == "succeeded" for j in jobs)
        # Quality metrics counted each subtask's execution exactly once.
        assert runs == N
        resumed = [c for c in fake.calls("/v1/chat/completions")
                   if c.body.get("messages", [{}])[-1].get("role") == "assistant"]
        assert len(resumed) > resumed_before, "no stream was resumed from its checkpoint"
        await db.dispose()


@pytest.mark.slow
async def test_a_kill_while_the_verdict_is_out_asks_again_only_for_the_verdict(migrated_db: str,
                                                                               tmp_path: Path) -> None:
    """The reference and the verdict are asked at once and each stored as it lands: a crash after
    the reference is stored and before the verdict lands re-asks only the verdict."""
    verdict = {"score": 92, "verdict": "approve", "issues": [], "summary": "fine"}
    async with FakeLMStudio() as fake:
        for name, family in (("alpha-7b", "qwen"), ("beta-3b", "llama")):
            # Free-text answers come at once; the verdict is held until the worker has been killed.
            fake.script(name, answer=ANSWER, family=family, structured={"Verdict": verdict}, structured_delay_s=600)
        db = create_engine(migrated_db)
        sessions = session_factory(db)
        async with sessions() as session, session.begin():
            await session.execute(update(AiProvider).values(base_url=fake.url))
        engine = Engine(session_factory=sessions, router=Router(), queue=JobQueue(db), settings=EngineSettings())
        task_id = (await engine.submit(title="one answer", single_step=True)).task_id
        log = tmp_path / "worker.log"
        worker = start_worker(migrated_db, fake, tmp_path / "data", log)

        def asked(title: str | None) -> list[Any]:
            return [c for c in fake.calls("/v1/chat/completions") if schema_title(c.body) == title]

        try:
            async def reference_stored() -> bool:
                async with sessions() as session:
                    keys = set((await session.scalars(select(JobCheckpoint.key))).all())
                return "reference" in keys and "verdict" not in keys

            await poll(reference_stored, timeout=60, what="the reference answer to be stored")
            assert len(asked("Verdict")) == 1  # out, and held by the peer
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            for name in ("alpha-7b", "beta-3b"):
                fake.script(name, structured_delay_s=0.0)
            worker = start_worker(migrated_db, fake, tmp_path / "data", log)

            async def finished() -> bool:
                async with sessions() as session:
                    task = await session.get(Task, task_id)
                    return task is not None and str(task.status) in ("completed", "failed")

            await poll(finished, timeout=60, what="the task to finish after the restart")
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        free_text = asked(None)
        assert len([c for c in free_text if c.body.get("stream")]) == 1  # the execution: stored, never re-run
        assert len([c for c in free_text if not c.body.get("stream")]) == 1  # the reference: stored, not re-asked
        assert len(asked("Verdict")) == 2  # lost with the process, asked again
        async with sessions() as session:
            task = await session.get(Task, task_id)
            (subtask,) = (await session.scalars(select(Subtask).where(Subtask.task_id == task_id))).all()
        assert task is not None and str(task.status) == "completed", (task and task.error, log.read_text()[-3000:])
        assert subtask.validation is not None and subtask.validation["status"] == "validated"
        assert subtask.validation["reference_answer"] == ANSWER and subtask.validation_score == 92
        await db.dispose()
