"""An executor model that never answers: the router's timeouts come from `[router]` settings, and
the subtask either completes on another server or fails with the reason — never hangs, never
loses work. Real HTTP peers (one stalls before its first token or mid-stream), real queue and DB."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from bot.db.engine import create_engine, session_factory
from bot.db.models import AiModel, AiProvider, AiQualityMetric
from bot.engine.embeddings import LexicalEmbedder
from bot.engine.runtime import EngineRuntime
from bot.events import EventBus
from bot.settings import load_settings
from tests.fakes import FakeLMStudio
from tests.integration.test_engine import PARIS, stop, subtasks_of, verdict, wait_task

STRUCTURED = {"Verdict": verdict(95, "approve")}


async def start(db_url: str, fake: FakeLMStudio, tmp_path: Path, *, router: dict[str, Any],
                engine: dict[str, Any] | None = None) -> EngineRuntime:
    settings = load_settings(environ={"ORCH_DATA_DIR": str(tmp_path / "data"), "ORCH_DATABASE_URL": db_url,
                                      "ORCH_LMSTUDIO__BASE_URL": fake.url},
                             engine={"checkpoint_interval_s": 0.05, **(engine or {})}, router=router)
    db = create_engine(db_url)
    runtime = EngineRuntime(settings=settings, db_engine=db, sessions=session_factory(db), bus=EventBus(),
                            worker_id=f"test-{time.monotonic_ns()}", embedder=LexicalEmbedder())
    await runtime.start()
    assert runtime.router is not None
    assert runtime.router.config.first_token_timeout_s == router.get("first_token_timeout_s", 60.0)
    return runtime


async def prefer_executor(runtime: EngineRuntime, key: str, category: str) -> None:
    """History that makes `key` the executor for `category`."""
    async with runtime.sessions() as session, session.begin():
        model_id = await session.scalar(select(AiModel.id).where(AiModel.model_key == key).limit(1))
        session.add(AiQualityMetric(model_id=model_id, category=category, runs=20, successes=20, failures=0,
                                    success_rate=1.0, mean_time_ms=10, validations=20, mean_validation_score=95,
                                    tiebreaks_won=0, tiebreaks_lost=0, ratings_count=0))


async def test_executor_silent_before_first_token_fails_over_to_another_server(
    migrated_db: str, fake_lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    lmstudio = fake_lmstudio
    lmstudio.script("qwen-7b", answer=PARIS, family="qwen", structured=STRUCTURED, first_token_delay_s=20)
    lmstudio.script("llama-3b", answer=PARIS, family="llama", structured=STRUCTURED)
    async with FakeLMStudio() as second:
        second.script("qwen-7b", answer=PARIS, family="qwen", structured=STRUCTURED)
        db = create_engine(migrated_db)
        async with session_factory(db)() as session, session.begin():
            await session.execute(update(AiProvider).values(base_url=lmstudio.url))
            session.add(AiProvider(name="LM Studio 2", kind="lmstudio", base_url=second.url, is_local=True))
        await db.dispose()
        runtime = await start(migrated_db, lmstudio, tmp_path,
                              router={"first_token_timeout_s": 2.0, "backoff_base_s": 0.01, "backoff_max_s": 0.05})
        try:
            assert runtime.engine is not None
            await prefer_executor(runtime, "qwen-7b", "research")
            started = time.monotonic()
            submitted = await runtime.engine.submit(title="What is the capital of France?", single_step=True,
                                                    category="research")
            task = await wait_task(runtime, submitted.task_id, timeout=30)
            assert str(task.status) == "completed", task.error
            assert time.monotonic() - started < 15, "the stalled server was waited for instead of timed out"
            (sub,) = await subtasks_of(runtime, task.id)
            assert sub.result == PARIS
            async with runtime.sessions() as session:
                executor_key = await session.scalar(select(AiModel.model_key)
                                                    .where(AiModel.id == sub.executor_model_id))
            assert executor_key == "qwen-7b"
            # The answer came from the second server; the silent one was asked and abandoned.
            assert any(c.body.get("stream") for c in second.calls("/v1/chat/completions"))
        finally:
            await stop(runtime)


async def test_executor_stalling_mid_stream_everywhere_fails_with_the_reason_after_retries(
    migrated_db: str, fake_lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    lmstudio = fake_lmstudio
    answer = " ".join(f"word{i}" for i in range(20))
    lmstudio.script("qwen-7b", answer=answer, family="qwen", structured=STRUCTURED, token_delay_s=20)
    lmstudio.script("llama-3b", answer=PARIS, family="llama", structured=STRUCTURED)
    db = create_engine(migrated_db)
    async with session_factory(db)() as session, session.begin():
        await session.execute(update(AiProvider).values(base_url=lmstudio.url))
    await db.dispose()
    runtime = await start(migrated_db, lmstudio, tmp_path,
                          # The first token comes at once, the second after 20 s: the total deadline
                          # passes mid-stream. Seconds, not fractions: a loaded machine once took over
                          # half a second to send the headers, which is a first-token timeout instead.
                          router={"first_token_timeout_s": 2.0, "total_timeout_s": 3.0, "retries_per_group": 0,
                                  "backoff_base_s": 0.01, "backoff_max_s": 0.05},
                          engine={"max_attempts": 2})
    assert runtime.queue is not None
    runtime.queue.retry_base_s = 0.05  # the retry comes quickly; its policy is tested in test_queue
    try:
        assert runtime.engine is not None
        await prefer_executor(runtime, "qwen-7b", "research")
        submitted = await runtime.engine.submit(title="Twenty words", single_step=True, category="research")
        task = await wait_task(runtime, submitted.task_id, timeout=30)
        assert str(task.status) == "failed"
        assert task.error is not None
        assert "gave up after 2 attempts" in task.error and "total timeout" in task.error, task.error
        (sub,) = await subtasks_of(runtime, task.id)
        assert str(sub.status) == "failed" and sub.error == task.error
        # Each attempt asked the model once (no retries configured), and nothing waited 20 s.
        streamed = [c for c in lmstudio.calls("/v1/chat/completions") if c.body.get("stream")]
        assert len(streamed) == 2
    finally:
        await stop(runtime)
