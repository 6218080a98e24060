"""`execute_dml` on the in-loop SQLite writer stores exactly what SQLAlchemy's own execution stores.

Two copies of the migrated database get the same writes, one through the direct sqlite3 path and
one through `AsyncConnection.execute`; every stored byte must match (datetimes, JSON, decimals,
Python-side defaults), as must row counts and the errors raised.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, delete, event, insert, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.direct import DmlResult, _prepared_for, execute_dml
from bot.db.engine import create_engine, sqlite_writer
from bot.db.models import CreditUsage, Task
from bot.db.models.queue import Job

JOBS = cast(Table, Job.__table__)
TASKS = cast(Table, Task.__table__)
WHEN = datetime(2026, 12, 7, 9, 30, 0, 0, tzinfo=UTC)
TOUCH = update(JOBS).where(JOBS.c.id == bindparam("b_id"), JOBS.c.fence == bindparam("b_fence")).values(
    heartbeat_at=bindparam("b_now", type_=JOBS.c.heartbeat_at.type),
    lease_expires_at=bindparam("b_later", type_=JOBS.c.lease_expires_at.type),
)
INSERT_JOB = insert(JOBS)
INSERT_JOB_ONCE = sqlite_insert(JOBS).on_conflict_do_nothing(index_elements=["idempotency_key"])
INSERT_USAGE = insert(CreditUsage)
INSERT_TASK = insert(TASKS)
RENAME_TASK = update(TASKS).where(TASKS.c.id == bindparam("b_id")).values(title=bindparam("b_title"))
FAIL_JOBS = update(JOBS).where(JOBS.c.id.in_(bindparam("b_ids", expanding=True))).values(status="failed")
DROP_JOB = delete(JOBS).where(JOBS.c.idempotency_key == bindparam("b_key"))
# Values the statement carries itself: a literal, a bound constant in an expression, a callable.
MARK = update(JOBS).where(JOBS.c.idempotency_key == bindparam("b_key")).values(
    status="running", attempts=JOBS.c.attempts + 2, error=bindparam("b_error", callable_=lambda: "from a callable"))


def _job(key: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "test", "idempotency_key": key, "payload": {"n": key, "ü": [1, 2.5, None]},
            "available_at": WHEN, **extra}


@asynccontextmanager
async def _writer(path: Path) -> AsyncIterator[tuple[AsyncConnection, list[str]]]:
    """The file's in-loop writer connection inside BEGIN IMMEDIATE, and the SQL SQLAlchemy itself ran."""
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    writer = sqlite_writer(engine)
    assert writer is not None
    through_sqlalchemy: list[str] = []
    event.listen(writer.engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_rest: through_sqlalchemy.append(statement))
    connection = await writer.engine.connect().start()
    try:
        await connection.exec_driver_sql("BEGIN IMMEDIATE")
        through_sqlalchemy.clear()
        yield connection, through_sqlalchemy
        await connection.commit()
    finally:
        await connection.close()
        await writer.engine.dispose()
        await engine.dispose()


def _rows(path: Path, table: str, *, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Stored values as SQLite holds them (text for datetimes and JSON), with their storage class."""
    with sqlite3.connect(path) as raw:
        raw.row_factory = sqlite3.Row
        rows = raw.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    # sqlite3.Row iterates over values, not names: keys() it is.
    return [{k: (row[k], type(row[k]).__name__) for k in row.keys() if k not in skip} for row in rows]  # noqa: SIM118


Run = Callable[[AsyncConnection, Any, Any], Any]


async def _direct(connection: AsyncConnection, statement: Any, params: Any) -> DmlResult:
    return await execute_dml(connection, statement, params)


async def _sqlalchemy(connection: AsyncConnection, statement: Any, params: Any) -> DmlResult:
    result: Any = await connection.execute(statement, params)
    return DmlResult(rowcount=result.rowcount, lastrowid=None if isinstance(params, list) else result.lastrowid)


async def _scenario(connection: AsyncConnection, run: Run) -> list[Any]:
    """Writes of every shape the queue sends; returns what each reported."""
    reported = [
        await run(connection, INSERT_TASK, {"title": "t", "description": ""}),  # Python-side defaults
        await run(connection, INSERT_JOB, [_job("a"), _job("b", priority=7), _job("c")]),
        await run(connection, INSERT_JOB_ONCE, _job("a")),  # a duplicate: ignored
        await run(connection, INSERT_JOB_ONCE, _job("d", provider="lmstudio")),
        await run(connection, TOUCH, [{"b_id": 1, "b_fence": 0, "b_now": WHEN, "b_later": WHEN + timedelta(seconds=30)},
                                      {"b_id": 2, "b_fence": 9, "b_now": WHEN, "b_later": WHEN}]),  # stale fence
        await run(connection, INSERT_USAGE, {"task_id": None, "prompt_tokens": 12, "cost": Decimal("0.000125")}),
        await run(connection, INSERT_USAGE, [{"prompt_tokens": 1, "completion_tokens": 2, "at": WHEN},
                                             {"prompt_tokens": 3, "completion_tokens": 4, "at": WHEN}]),
        await run(connection, RENAME_TASK, {"b_id": 1, "b_title": "renamed"}),
        await run(connection, MARK, {"b_key": "a"}),  # the callable's value
        await run(connection, MARK, [{"b_key": "b", "b_error": "given"}, {"b_key": "d", "b_error": None}]),
        await run(connection, FAIL_JOBS, {"b_ids": [2, 3]}),  # expanding IN: SQLAlchemy's path
        await run(connection, DROP_JOB, {"b_key": "c"}),
    ]
    return [(r.rowcount, r.lastrowid) for r in reported]


async def test_direct_writes_store_what_sqlalchemy_stores(sqlite_template: Path, tmp_path: Path) -> None:
    paths = {name: tmp_path / f"{name}.db" for name in ("direct", "sqlalchemy")}
    reports = {}
    for name, path in paths.items():
        shutil.copyfile(sqlite_template, path)
        async with _writer(path) as (connection, through_sqlalchemy):
            reports[name] = await _scenario(connection, _direct if name == "direct" else _sqlalchemy)
            if name == "direct":  # only the expanding IN went through SQLAlchemy's execution
                assert through_sqlalchemy == [through_sqlalchemy[0]]
                assert "IN (" in through_sqlalchemy[0]
    assert reports["direct"] == reports["sqlalchemy"]
    assert reports["direct"][2][0] == 0 and reports["direct"][4][0] == 1  # the duplicate, the stale fence
    errors = {row["idempotency_key"][0]: row["error"][0] for row in _rows(paths["direct"], "jobs")}
    assert errors == {"a": "from a callable", "b": "given", "d": None}
    for table, skip in (("jobs", ("created_at", "updated_at")), ("credit_usage", ("at",)),
                        ("tasks", ("created_at", "updated_at"))):
        direct, reference = _rows(paths["direct"], table, skip=skip), _rows(paths["sqlalchemy"], table, skip=skip)
        assert direct == reference, table
    # Defaults filled on the Python side have the same stored form on both paths.
    for path in paths.values():
        stamps = [row["at"][0] for row in _rows(path, "credit_usage")]
        stamps += [_rows(path, "tasks")[0]["updated_at"][0]]
        for stamp in stamps:
            assert datetime.fromisoformat(stamp).year >= 2026 and len(stamp) == len("2026-12-07 09:30:00.000000")


async def test_errors_are_sqlalchemys_and_the_transaction_survives(sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "errors.db"
    shutil.copyfile(sqlite_template, path)
    async with _writer(path) as (connection, _through):
        await execute_dml(connection, INSERT_JOB, _job("kept"))
        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            await execute_dml(connection, INSERT_USAGE, {"task_id": 424242})
        with pytest.raises(IntegrityError, match="NOT NULL"):
            await execute_dml(connection, INSERT_JOB, {"kind": "test"})
        with pytest.raises(StatementError, match="A value is required for bind parameter 'b_later'"):
            await execute_dml(connection, TOUCH, [{"b_id": 1, "b_fence": 0, "b_now": WHEN, "b_later": WHEN},
                                                  {"b_id": 1, "b_fence": 0, "b_now": WHEN}])
        with pytest.raises(StatementError, match="naive datetimes are ambiguous"):
            await execute_dml(connection, TOUCH, {"b_id": 1, "b_fence": 0, "b_now": datetime(2026, 1, 1),
                                                  "b_later": WHEN})
        await execute_dml(connection, INSERT_JOB, _job("also kept"))
    assert [row["idempotency_key"][0] for row in _rows(path, "jobs")] == ["kept", "also kept"]


async def test_other_connections_take_sqlalchemys_path(sqlite_url: str) -> None:
    from bot.db.migrate import upgrade_to_head

    await upgrade_to_head(sqlite_url, backup_dir=None)
    engine = create_engine(sqlite_url)
    try:
        async with engine.begin() as connection:  # aiosqlite's threaded connection
            outcome = await execute_dml(connection, INSERT_JOB, _job("threaded"))
            assert outcome.rowcount == 1 and outcome.lastrowid is not None
            assert (await execute_dml(connection, INSERT_JOB, [])).rowcount == 0
    finally:
        await engine.dispose()


@pytest.mark.parametrize("moment", [
    datetime(2026, 12, 7, 9, 30, tzinfo=UTC),
    datetime(2026, 12, 7, 9, 30, 1, 5, tzinfo=UTC),
    datetime(999, 1, 2, 3, 4, 5, 999999, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
])
def test_sqlite_datetimes_are_stored_as_sqlalchemys_datetime_stores_them(moment: datetime) -> None:
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite

    from bot.db.base import UTCDateTime

    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    theirs = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None and theirs is not None
    assert ours(moment) == theirs(moment.astimezone(UTC).replace(tzinfo=None))
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive"):
        ours(moment.replace(tzinfo=None))
    # The last value's text is remembered by identity: an equal moment in another zone, the same
    # object again, and a different one each get their own text.
    other = moment.astimezone(timezone(timedelta(hours=5)))
    later = moment + timedelta(microseconds=1)
    for value in (moment, moment, other, later, moment, later.astimezone(timezone(timedelta(0)))):
        assert ours(value) == theirs(value.astimezone(UTC).replace(tzinfo=None))


async def test_prepared_statements_bind_rows_as_construct_params_does(sqlite_template: Path, tmp_path: Path) -> None:
    """The generated binder is used, and gives the tuple SQLAlchemy's `construct_params` route gives."""
    path = tmp_path / "binder.db"
    shutil.copyfile(sqlite_template, path)
    cases = [(TOUCH, {"b_id": 1, "b_fence": 0, "b_now": WHEN, "b_later": WHEN + timedelta(seconds=1)}),
             (MARK, {"b_key": "x"}), (MARK, {"b_key": "x", "b_error": "e"}),
             (RENAME_TASK, {"b_id": 3, "b_title": "ü"}), (DROP_JOB, {"b_key": "k"}),
             (INSERT_JOB, {**_job("j"), "created_at": WHEN, "updated_at": WHEN})]
    async with _writer(path) as (connection, _through):
        for statement, row in cases:
            prepared = _prepared_for(connection, statement, tuple(row), False)
            assert prepared is not None and prepared.binder is not None
            values = prepared.compiled.construct_params(row, escape_names=False)
            for name, default in prepared.defaults:
                values[name] = default()
            expected = tuple(values[name] if process is None else process(values[name])
                             for name, process in prepared.binds)
            timed = {name for name, _default in prepared.defaults}  # `updated_at`: now, on both routes
            bound = prepared.binder(row)
            assert len(bound) == len(expected)
            for (name, _process), got, want in zip(prepared.binds, bound, expected, strict=True):
                assert got == want or (name in timed and len(got) == len(want)), name


async def test_prepared_statements_are_kept_per_dialect(sqlite_template: Path, tmp_path: Path) -> None:
    """Two engines' writers never share a prepared statement: SQL and bind processors are the dialect's."""
    for name in ("a.db", "b.db"):
        shutil.copyfile(sqlite_template, tmp_path / name)
    row = {"b_id": 1, "b_fence": 0, "b_now": WHEN, "b_later": WHEN}
    async with _writer(tmp_path / "a.db") as (first, _), _writer(tmp_path / "b.db") as (second, _):
        assert first.dialect is not second.dialect
        mine = _prepared_for(first, TOUCH, tuple(row), False)
        theirs = _prepared_for(second, TOUCH, tuple(row), False)
        assert mine is not None and theirs is not None and mine is not theirs
        assert _prepared_for(first, TOUCH, tuple(row), False) is mine  # each kept for its own dialect
        assert _prepared_for(second, TOUCH, tuple(row), False) is theirs
        assert (await execute_dml(second, TOUCH, row)).rowcount == 0  # no job 1 in this file: runs, matches none
