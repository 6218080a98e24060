"""The SQLite JSON projection renders every eligible resource exactly as its pydantic Read model does."""

from __future__ import annotations

import importlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from admin_api.app import ROUTE_MODULES
from admin_api.reader import Reader
from admin_api.resource import Resource
from bot.db.base import utcnow
from bot.db.engine import create_engine, session_factory
from bot.db.models import ExecutionLog, KnowledgeSource, LogLevel


def _resources() -> list[Resource]:
    found = []
    for name in ROUTE_MODULES:
        module = importlib.import_module(name)
        found += [value for value in vars(module).values() if isinstance(value, Resource)]
    return found


def _normalised(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _normalised(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T":
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value


async def test_json_rows_match_the_read_models(migrated_db: str, tmp_path: Path) -> None:
    if not migrated_db.startswith("sqlite"):
        return  # the projection is SQLite's; MariaDB always takes the pydantic path
    engine = create_engine(migrated_db)
    reader = Reader(engine)
    try:
        async with session_factory(engine)() as session:
            session.add(ExecutionLog(level=LogLevel.WARNING, event="e", prompt="p ü \"q\"\n", response=None,
                                     details={"a": [1, 2.5, None, True], "b": "é"}, created_at=utcnow()))
            session.add(KnowledgeSource(name="proj", kind="url", uri="http://x", settings={"k": 1}, is_active=False))
            await session.commit()
        checked = []
        for resource in _resources():
            if resource.json_row is None:
                continue
            (rows,) = await reader.rows(select(*resource.columns_selected).order_by(resource.pk.desc()).limit(5))
            for row in rows:
                (rendered,) = await reader.rows(select(resource.json_row).where(resource.pk == row.id))
                expected = json.loads(resource.serialise(row).model_dump_json())
                assert _normalised(json.loads(rendered[0][0])) == _normalised(expected), resource.name
                assert list(json.loads(rendered[0][0])) == list(expected), resource.name
                checked.append(resource.name)
        assert {"execution-logs", "knowledge-sources", "users"} <= set(checked)
    finally:
        reader.dispose()
        await engine.dispose()


async def test_list_totals_are_reused_briefly_and_reset_by_api_writes(migrated_db: str, tmp_path: Path) -> None:
    import asyncio

    from admin_api import ApiOptions
    from tests.integration import test_api_harness as harness

    options = ApiOptions(rate_per_second=10_000, burst=10_000, token_cache_seconds=0, count_cache_seconds=0.5)
    api = await harness.make_api(migrated_db, tmp_path, options=options)
    try:
        _, first, _ = await api.call("GET", "/execution-logs", expect=200)
        async with api.sessions() as session:  # a row written by another component (the engine)
            session.add(ExecutionLog(level=LogLevel.INFO, event="late", details={}, created_at=utcnow()))
            await session.commit()
        _, cached, _ = await api.call("GET", "/execution-logs", expect=200)
        assert cached["total"] == first["total"] and len(cached["items"]) == first["total"] + 1
        await asyncio.sleep(0.6)
        _, fresh, _ = await api.call("GET", "/execution-logs", expect=200)
        assert fresh["total"] == first["total"] + 1
        # A write through the API is counted at once.
        _, before, _ = await api.call("GET", "/knowledge-sources", expect=200)
        await api.call("POST", "/knowledge-sources", scope="write", expect=201,
                       json={"name": "counted", "kind": "url", "uri": "http://example.org"})
        _, after, _ = await api.call("GET", "/knowledge-sources", expect=200)
        assert after["total"] == before["total"] + 1
    finally:
        await harness.close_api(api)
