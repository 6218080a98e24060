"""`fetch` (reads straight to sqlite3) returns what SQLAlchemy's own execution returns.

The same statements run both ways on one migrated database with real rows: keys, values and their
Python types (datetimes, JSON, enums, booleans, NULLs) must match, and so must the errors. The
engine's own hot-path statements are among them, and `LazyReads` — which uses `fetch` on a SQLite
file — is compared with the SQLAlchemy route it replaces.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, event, func, select, text
from sqlalchemy.exc import OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db.direct import fetch, read_in
from bot.db.engine import RawReaders, create_engine, lazy_reads, raw_readers, read_connection, sqlite_writer
from bot.db.models import AiModel, AiProvider, Subtask, Task
from bot.db.models.enums import TaskStatus
from bot.db.models.queue import Job
from bot.engine.orchestrator import _SUBTASK_CONTEXT, _TASK_HEAD, _TASK_RESULTS
from bot.engine.queue.store import JobQueue

TASKS = cast(Table, Task.__table__)
SUBTASKS = cast(Table, Subtask.__table__)
JOBS = cast(Table, Job.__table__)
PROVIDERS = cast(Table, AiProvider.__table__)
MODELS = cast(Table, AiModel.__table__)
WHEN = datetime(2026, 12, 7, 9, 30, 0, 123456, tzinfo=UTC)
Handles = tuple[AsyncEngine, sqlite3.Connection]

# (statement, parameters): Core selects of every column kind, labels, joins, a scalar subquery,
# literal and bound limits, aggregates, and the engine's own lookups.
STATEMENTS: list[tuple[Any, dict[str, Any]]] = [
    (select(TASKS), {}),
    (select(SUBTASKS).where(SUBTASKS.c.task_id == bindparam("b_task")).order_by(SUBTASKS.c.seq), {"b_task": 1}),
    (select(JOBS).where(JOBS.c.status == "queued", JOBS.c.available_at <= bindparam(
        "b_now", type_=JOBS.c.available_at.type)).order_by(JOBS.c.priority.desc(), JOBS.c.id)
     .limit(bindparam("b_fetch")), {"b_now": datetime(2030, 1, 1, tzinfo=UTC), "b_fetch": 2}),
    (select(PROVIDERS.c.id, PROVIDERS.c.kind, PROVIDERS.c.is_enabled, PROVIDERS.c.settings,
            PROVIDERS.c.health_status, PROVIDERS.c.last_checked_at).order_by(PROVIDERS.c.id), {}),
    (select(MODELS.c.model_key, PROVIDERS.c.name.label("provider_name"), MODELS.c.capabilities,
            MODELS.c.is_loaded).join(PROVIDERS, PROVIDERS.c.id == MODELS.c.provider_id).limit(3), {}),
    (select(func.count()).select_from(SUBTASKS), {}),
    (select(TASKS.c.status, func.count().label("n")).group_by(TASKS.c.status).order_by(TASKS.c.status), {}),
    (select(TASKS.c.id).where(TASKS.c.id == -1), {}),
    (_SUBTASK_CONTEXT, {"b_id": 1}),
    (_TASK_HEAD, {"b_task": 1}),
    (_TASK_RESULTS, {"b_task": 1}),
]


@pytest.fixture
async def database(sqlite_template: Path, tmp_path: Path) -> Path:
    """A migrated copy with a task, its subtasks and jobs: datetimes, JSON, enums, NULLs."""
    path = tmp_path / "reads.db"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as connection:
            for task in ({"title": "capital", "description": "What is the capital of France?",
                          "status": TaskStatus.RUNNING, "origin": {"platform": "slack", "ü": [1, 2.5, None]}},
                         {"title": "done", "status": TaskStatus.COMPLETED, "result": "Paris", "origin": {}}):
                await connection.execute(TASKS.insert(), {**task, "created_at": WHEN, "updated_at": WHEN})
            for subtask in ({"seq": 1, "title": "answer", "depends_on": [], "category": "general"},
                            {"seq": 2, "title": "check", "depends_on": [1], "result": "ok", "validation_score": 87.5}):
                await connection.execute(SUBTASKS.insert(), {**subtask, "task_id": 1, "created_at": WHEN,
                                                             "updated_at": WHEN})
            await connection.execute(JOBS.insert(), [
                {"kind": "subtask", "idempotency_key": f"k{i}", "payload": {"subtask_id": i}, "priority": i,
                 "task_id": 1, "available_at": WHEN} for i in (1, 2, 3)
            ])
    finally:
        await engine.dispose()
    return path


@pytest.fixture
async def handles(database: Path) -> AsyncIterator[Handles]:
    """The database's SQLAlchemy engine and a plain sqlite3 connection to it."""
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    raw = sqlite3.connect(database)
    try:
        yield engine, raw
    finally:
        raw.close()
        await engine.dispose()


def _fetch(raw: sqlite3.Connection, dialect: Any, statement: Any, params: dict[str, Any] | None = None) -> Any:
    """`fetch` at a statement object's second use, the first that may take the direct path."""
    first = fetch(raw, dialect, statement, params)
    assert first is None
    return fetch(raw, dialect, statement, params)


def _shape(result: Any) -> tuple[list[str], list[tuple[Any, ...]], list[list[type]]]:
    rows = result.all()
    return list(result.keys()), [tuple(row) for row in rows], [[type(value) for value in row] for row in rows]


async def test_fetch_returns_what_sqlalchemy_returns(handles: Handles) -> None:
    engine, raw = handles
    async with engine.connect() as connection:
        for statement, params in STATEMENTS:
            direct = _fetch(raw, engine.dialect, statement, params)
            assert direct is not None, statement  # covered, not handed back
            expected = await connection.execute(statement, params)
            assert _shape(direct) == _shape(expected), statement
    # Attribute access, first() and scalar() behave as on SQLAlchemy's rows.
    row = cast(Any, fetch(raw, engine.dialect, _SUBTASK_CONTEXT, {"b_id": 1})).first()  # prepared above
    assert row.task_status is TaskStatus.RUNNING and row.depends_on == [] and row.subtasks == 2
    assert _fetch(raw, engine.dialect, select(func.count()).select_from(JOBS)).scalar() == 3
    provider = _fetch(raw, engine.dialect, select(PROVIDERS).limit(1)).first()
    assert provider is not None and isinstance(provider.is_enabled, bool)
    assert isinstance(provider.created_at, datetime) and provider.created_at.tzinfo is not None


async def test_the_claim_and_the_idle_probe_read_through_fetch(handles: Handles) -> None:
    """The queue builds them once per set of kinds, with the kinds compiled in, so they are covered."""
    engine, raw = handles
    queue = JobQueue(engine)
    params = {"b_now": datetime(2030, 1, 1, tzinfo=UTC), "b_fetch": 5}
    async with engine.connect() as connection:
        for kinds, full in ((("subtask", "task.finish"), ()), (("subtask",), ("lmstudio",)), (None, ())):
            claim = queue._claim_query(kinds, full)
            direct = _fetch(raw, engine.dialect, claim, params)
            assert direct is not None
            assert _shape(direct) == _shape(await connection.execute(claim, params))
    assert await queue.has_claimable(["subtask"]) and not await queue.has_claimable(["nothing.queued"])


async def test_statements_it_does_not_cover_are_handed_back(handles: Handles) -> None:
    engine, raw = handles
    expanding = select(TASKS.c.id).where(TASKS.c.id.in_(bindparam("b_ids", expanding=True)))
    for statement, params in ((select(Task), {}), (expanding, {"b_ids": [1, 2]}), (text("SELECT 1"), {}),
                              (TASKS.update().values(title="x"), {})):  # ORM, expanding, textual, DML
        assert _fetch(raw, engine.dialect, statement, params) is None
    # The same statements through LazyReads still work: SQLAlchemy runs them.
    async with lazy_reads(engine) as reads:
        assert (await reads.execute(expanding, {"b_ids": [1, 2]})).scalars().all() == [1, 2]
        assert (await reads.execute(text("SELECT 41 + 1"))).scalar() == 42


async def test_a_statement_takes_the_direct_path_from_its_second_use(handles: Handles) -> None:
    """One built for a single call is never compiled here (SQLAlchemy's route has it cached)."""
    engine, raw = handles
    for _ in range(3):
        assert fetch(raw, engine.dialect, select(TASKS.c.id).where(TASKS.c.id == 1)) is None  # new each time
    kept = select(TASKS.c.id).where(TASKS.c.id == 1)
    assert fetch(raw, engine.dialect, kept) is None
    assert cast(Any, fetch(raw, engine.dialect, kept)).scalar() == 1
    assert cast(Any, fetch(raw, engine.dialect, kept)).scalar() == 1
    async with lazy_reads(engine) as reads:  # both uses answer, whichever route runs them
        for _ in range(2):
            assert (await reads.execute(_TASK_HEAD, {"b_task": 2})).first().status is TaskStatus.COMPLETED


async def test_errors_are_sqlalchemys(handles: Handles) -> None:
    engine, raw = handles
    with pytest.raises(StatementError, match="b_task"):  # a required value left out
        _fetch(raw, engine.dialect, _TASK_HEAD, {})
    async with engine.connect() as connection:
        with pytest.raises(StatementError, match="b_task"):
            await connection.execute(_TASK_HEAD, {})
    one_task = select(TASKS.c.id).where(TASKS.c.id == 1)
    raw.execute("ALTER TABLE tasks RENAME TO tasks_gone")
    assert fetch(raw, engine.dialect, one_task) is None  # its first use
    with pytest.raises(OperationalError, match="no such table: tasks"):
        fetch(raw, engine.dialect, one_task)
    async with engine.connect() as connection:
        with pytest.raises(OperationalError, match="no such table: tasks"):
            await connection.execute(one_task)


async def test_lazy_reads_give_the_rows_read_connection_gives(database: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        pool = raw_readers(engine)
        assert isinstance(pool, RawReaders) and pool is raw_readers(engine)
        traced: list[str] = []
        reader = pool.take()
        reader.set_trace_callback(traced.append)  # the raw reader LazyReads will take: what ran there
        pool.give(reader)
        for statement, params in STATEMENTS:
            async with read_connection(engine) as connection:
                expected = _shape(await connection.execute(statement, params))
            for use in (1, 2):  # SQLAlchemy's route, then the direct one
                traced.clear()
                async with lazy_reads(engine) as reads:
                    assert _shape(await reads.execute(statement, params)) == expected, (use, statement)
                assert bool(traced) == (use == 2), (use, statement)
        reader.set_trace_callback(None)
        connection = pool.take()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # query_only, as the SA reader
            connection.execute("UPDATE tasks SET title = 'x'")
        pool.give(connection)
        pool.close()
    finally:
        await engine.dispose()


async def test_raw_readers_keep_a_few_connections_and_see_new_commits(database: Path) -> None:
    pool = RawReaders(str(database), keep=2)
    taken = [pool.take() for _ in range(3)]
    for connection in taken:
        pool.give(connection)
    assert len(pool._idle) == 2  # the third was closed
    again = pool.take()
    assert again in taken[:2]
    writer = sqlite3.connect(database)
    try:
        before = again.execute("SELECT count(*) FROM tasks").fetchone()[0]
        writer.execute("INSERT INTO tasks (title, description, priority, status, origin, created_at, updated_at) "
                       "VALUES ('new', '', 0, 'pending', '{}', '2026-12-07 10:00:00', '2026-12-07 10:00:00')")
        writer.commit()
        pool.give(again)
        assert pool.take().execute("SELECT count(*) FROM tasks").fetchone()[0] == before + 1
    finally:
        writer.close()
        pool.close()


def test_raw_readers_are_only_for_sqlite_files(sqlite_url: str) -> None:
    assert raw_readers(create_engine("sqlite+aiosqlite://")) is None
    assert raw_readers(create_engine(sqlite_url)) is not None


async def test_read_in_sees_the_callers_write_transaction(database: Path) -> None:
    """Commit hooks' reads: the session's own rows, pending ORM rows included; direct from the second use."""
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    queue = JobQueue(engine)
    writer = sqlite_writer(engine)
    assert writer is not None
    through_sqlalchemy: list[str] = []
    event.listen(writer.engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_rest: through_sqlalchemy.append(statement))
    titles = select(TASKS.c.id, TASKS.c.title, TASKS.c.status, TASKS.c.origin, TASKS.c.created_at).order_by(TASKS.c.id)
    try:
        async with queue.session() as session:
            for use in (1, 2):  # SQLAlchemy's route, then the direct one
                session.add(Task(title=f"pending {use}", description="", origin={"ü": use}, created_at=WHEN,
                                 updated_at=WHEN))
                through_sqlalchemy.clear()
                got = _shape(await read_in(session, titles))
                # The pending row is flushed first, as autoflush would, on both routes.
                assert [row[1] for row in got[1]] == ["capital", "done", *(f"pending {n}" for n in range(1, use + 1))]
                assert any(sql.startswith("SELECT") for sql in through_sqlalchemy) == (use == 1)
            assert got == _shape(await session.execute(titles))
            await session.rollback()
        async with read_connection(engine) as connection:  # no write transaction: SQLAlchemy's route
            through_sqlalchemy.clear()
            assert [row.title for row in (await read_in(connection, titles)).all()] == ["capital", "done"]
    finally:
        await engine.dispose()
