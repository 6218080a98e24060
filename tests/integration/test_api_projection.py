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


async def test_json_pages_page_like_the_typed_path(migrated_db: str, tmp_path: Path) -> None:
    """Every sort pages through all rows in order, with the cursors the pydantic path issues."""
    import uuid
    from datetime import UTC, timedelta

    from admin_api.pagination import encode_cursor
    from tests.integration import test_api_harness as harness

    marker = f"pages-{uuid.uuid4().hex[:8]}"
    base = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    # Ties on created_at (the id breaks them) and whole seconds (stored without a fraction's digits).
    times = [base, base, base + timedelta(microseconds=250), base + timedelta(seconds=1), base - timedelta(days=1),
             base + timedelta(seconds=1), base + timedelta(hours=2, microseconds=1)]
    api = await harness.make_api(migrated_db, tmp_path)
    try:
        async with api.sessions() as session:
            rows = [ExecutionLog(level=LogLevel.INFO, event=marker, details={"n": n}, created_at=at)
                    for n, at in enumerate(times)]
            session.add_all(rows)
            await session.commit()
            created = {row.id: row.created_at for row in rows}
        for sort in ("id", "-id", "created_at", "-created_at"):
            key = sort.lstrip("-")
            expected = sorted(created, key=lambda row_id: (created[row_id] if key == "created_at" else 0, row_id),
                              reverse=sort.startswith("-"))
            seen: list[int] = []
            url: str | None = f"/execution-logs?limit=3&sort={sort}&event={marker}"
            while url is not None:
                _, page, headers = await api.call("GET", url, scope="read", expect=200)
                assert page["total"] == len(times) and headers["X-Total-Count"] == str(len(times))
                seen += [item["id"] for item in page["items"]]
                url = _next_link(headers["Link"])
                if page["next_cursor"] is None:
                    assert url is None
                    continue
                last = page["items"][-1]["id"]
                value = created[last] if key == "created_at" else last
                assert page["next_cursor"] == encode_cursor(sort=sort, value=value, row_id=last), sort
                assert url is not None and f"cursor={page['next_cursor']}" in url
            assert seen == expected, sort
    finally:
        await harness.close_api(api)


def _next_link(header: str) -> str | None:
    import re

    match = re.search(r'<([^>]+)>; rel="next"', header)
    return match.group(1) if match else None


async def test_rows_holding_nan_or_infinity_answer_as_pydantic_does(migrated_db: str, tmp_path: Path) -> None:
    """Python's json writes NaN/Infinity, which SQLite's json() refuses: such rows still answer, as null."""
    if not migrated_db.startswith("sqlite"):
        return  # MariaDB's JSON check constraint refuses NaN at insert; the projection is SQLite's
    import math
    import uuid

    from admin_api.resources.logs import ExecutionLogRead
    from tests.integration import test_api_harness as harness

    marker = f"nan-{uuid.uuid4().hex[:8]}"
    api = await harness.make_api(migrated_db, tmp_path)
    try:
        async with api.sessions() as session:
            odd = ExecutionLog(level=LogLevel.ERROR, event=marker, created_at=utcnow(), details={
                "score": math.nan, "high": math.inf, "low": -math.inf, "note": "NaN and Infinity, as text",
                "nested": {"x": [1, math.nan]}})
            plain = ExecutionLog(level=LogLevel.INFO, event=marker, details={"ok": "é"}, created_at=utcnow())
            session.add_all([odd, plain])
            await session.commit()
            expected = {row.id: json.loads(ExecutionLogRead.model_validate(row).model_dump_json())
                        for row in (odd, plain)}
        assert expected[odd.id]["details"] == {"score": None, "high": None, "low": None,
                                               "note": "NaN and Infinity, as text", "nested": {"x": [1, None]}}
        for row_id, want in expected.items():
            _, got, _ = await api.call("GET", f"/execution-logs/{row_id}", scope="read", expect=200)
            assert _normalised(got) == _normalised(want)
        _, page, headers = await api.call("GET", f"/execution-logs?event={marker}&limit=1", scope="read", expect=200)
        assert page["total"] == 2 and headers["X-Total-Count"] == "2"
        assert [_normalised(item) for item in page["items"]] == [_normalised(expected[odd.id])]
        _, rest, _ = await api.call("GET", f"/execution-logs?event={marker}&cursor={page['next_cursor']}",
                                    scope="read", expect=200)
        assert [_normalised(item) for item in rest["items"]] == [_normalised(expected[plain.id])]
    finally:
        await harness.close_api(api)


async def test_cached_statements_bind_each_call_like_sqlalchemy(tmp_path: Path) -> None:
    """One compiled statement serves every value: processed binds, escaped names, compiled-in defaults."""
    from datetime import UTC, timedelta

    from sqlalchemy import bindparam

    from bot.db.base import UTCDateTime
    from bot.db.migrate import upgrade_to_head

    url = f"sqlite+aiosqlite:///{tmp_path / 'reader.db'}"
    await upgrade_to_head(url, backup_dir=None)
    engine = create_engine(url)
    reader = Reader(engine)
    base = datetime(2026, 5, 1, 8, 0, 0, tzinfo=UTC)
    try:
        async with session_factory(engine)() as session:
            session.add_all([ExecutionLog(level=LogLevel.INFO, event="bind", details={}, created_at=base + timedelta(
                minutes=n)) for n in range(5)])
            await session.commit()

        def build() -> Any:
            # A name SQLAlchemy must escape, a datetime its type processes, and OFFSET's own default.
            since = bindparam("since.at[0]", type_=UTCDateTime())
            return (select(ExecutionLog.id).where(ExecutionLog.event == "bind", ExecutionLog.created_at >= since)
                    .order_by(ExecutionLog.id).limit(bindparam("n")))

        (everything,) = await reader.rows(select(ExecutionLog.id).where(ExecutionLog.event == "bind")
                                          .order_by(ExecutionLog.id))
        ids = [row[0] for row in everything]
        first = reader.run_cached("k", build, {"since.at[0]": base + timedelta(minutes=3), "n": 10})
        again = reader.run_cached("k", build, {"since.at[0]": base + timedelta(minutes=1), "n": 2})
        assert [row[0] for row in first] == ids[3:]
        assert [row[0] for row in again] == ids[1:3]
        assert len(reader._compiled) == 1
    finally:
        reader.dispose()
        await engine.dispose()
