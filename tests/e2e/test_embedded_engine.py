"""The engine with real models: the embedded SmolLM2 and Gemma 3 (two families) execute and
validate a small task, and the divergence is computed from their real answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db.engine import create_engine, session_factory
from bot.db.models import AiModel, ExecutionLog, Subtask, Task
from bot.engine.runtime import EngineRuntime
from bot.settings import load_settings
from tests.e2e.test_embedded_llm import _require_packages


@pytest.mark.slow
async def test_two_embedded_models_execute_and_validate_with_real_divergence(migrated_db: str,
                                                                            tmp_path: Path) -> None:
    _require_packages()
    if not migrated_db.startswith("sqlite"):
        pytest.skip("one backend is enough for the real-model run; the engine is backend-tested elsewhere")
    # No LM Studio answers on port 9: the daemon falls back to the embedded models and says so.
    settings = load_settings(environ={"ORCH_DATA_DIR": str(tmp_path / "data"), "ORCH_DATABASE_URL": migrated_db,
                                      "ORCH_LMSTUDIO__BASE_URL": "http://127.0.0.1:9"},
                             engine={"execute_max_tokens": 96})
    db = create_engine(migrated_db)
    runtime = EngineRuntime(settings=settings, db_engine=db, sessions=session_factory(db))
    await runtime.start()
    try:
        assert any("embedded" in notice for notice in runtime.notices), runtime.notices
        assert runtime.engine is not None
        submitted = await runtime.engine.submit(title="What is the capital of France? Answer in one sentence.",
                                                single_step=True)
        deadline = time.monotonic() + 600
        while True:
            async with runtime.sessions() as session:
                task = await session.get(Task, submitted.task_id)
                assert task is not None
                if str(task.status) in ("completed", "failed"):
                    break
            assert time.monotonic() < deadline, "the embedded models did not finish in 10 minutes"
            await asyncio.sleep(0.5)
        assert str(task.status) == "completed", task.error
        async with runtime.sessions() as session:
            (sub,) = (await session.scalars(select(Subtask).where(Subtask.task_id == task.id))).all()
            keys = {m.id: m.model_key for m in (await session.scalars(select(AiModel))).all()}
            events = set((await session.scalars(select(ExecutionLog.event).where(
                ExecutionLog.task_id == task.id))).all())
        assert sub.result
        assert sub.validator_model_id is not None
        assert keys[sub.executor_model_id or 0] != keys[sub.validator_model_id]
        validation = sub.validation or {}
        assert validation["status"] in ("validated", "unvalidated")
        if validation["status"] == "validated":
            assert sub.divergence_pct is not None
            assert 0 <= sub.divergence_pct <= 100
            assert validation["divergence"]["similarity"] != 1.0 or validation["reference_answer"] == sub.result
        assert {"execute", "reference", "verdict"} <= events
    finally:
        await runtime.stop()
        await db.dispose()
