"""INSERT/UPDATE/DELETE on the in-loop SQLite writer, sent to sqlite3 without SQLAlchemy's execution machinery.

On the writer's connection (see `bot.db.engine.SqliteWriter`) a statement's SQLite work is a few
microseconds, but `AsyncConnection.execute` cost about 100 µs per call: an execution context,
parameter processing through several layers, a greenlet switch, a result object nobody reads.
The queue runs dozens of such statements per subtask, all inside one short write transaction.

`execute_dml` keeps SQLAlchemy for what it is good at — the statement is compiled by SQLAlchemy
for this dialect, once, and every parameter goes through the same bind processors (types, JSON
serialiser, Python-side column defaults) — and hands the compiled SQL and the processed tuple
straight to the sqlite3 cursor. Errors come back as the same `sqlalchemy.exc` classes. Anything it
does not cover (another database, a connection outside a transaction, RETURNING, expanding IN
parameters, SQL-side defaults) goes through `AsyncConnection.execute` unchanged, so callers need
not know which path ran.

Statements must be long-lived objects (module or instance attributes): each is compiled once per
set of parameter names and kept by identity.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.engine import CursorResult, Dialect, Result
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import Delete, Insert, Select, Update
from sqlalchemy.sql.compiler import SQLCompiler

from bot.db.engine import inline_sqlite_connection, run_raw_sql

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None

# Prepared statements kept at most; past this the cache starts afresh (a caller building a new
# statement per call would otherwise grow it without end).
MAX_PREPARED = 512


@dataclass(frozen=True, slots=True)
class DmlResult:
    """What a DML statement reports back: rows matched and, for a single INSERT, the new row's id."""

    rowcount: int
    lastrowid: int | None


@dataclass(frozen=True, slots=True)
class _Prepared:
    compiled: SQLCompiler
    sql: str
    # (bind name, its processor or None) in the order of the statement's `?` placeholders.
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    # (bind name, Python-side default) for columns the caller left to their default.
    defaults: tuple[tuple[str, Callable[[], Any]], ...]
    # Builds a row's tuple from a parameter dict with the prepared keys (see `_binder`); None
    # when the statement needs SQLAlchemy's own `construct_params` for every row.
    binder: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None
    # A SELECT's result columns: their keys and result processors, as SQLAlchemy's own result
    # would have them (None for DML).
    columns: SimpleResultMetaData | None = None


def _default_of(column: Any, *, insert: bool) -> Callable[[], Any] | None:
    default = column.default if insert else column.onupdate
    if default is None:
        return None
    if default.is_scalar:
        value = default.arg
        return lambda: value
    if default.is_callable:
        # SQLAlchemy wraps a no-argument default to take its execution context; ours never use it.
        function = default.arg
        return lambda: function(None)
    return None  # a SQL expression or a sequence: SQLAlchemy's own path evaluates those


def _prepare(connection: AsyncConnection, statement: Any, keys: Sequence[str], many: bool) -> _Prepared | None:
    if not isinstance(statement, Insert | Update | Delete) or statement._returning:
        return None
    compiled = statement.compile(dialect=connection.dialect, column_keys=list(keys), for_executemany=many)
    if not isinstance(compiled, SQLCompiler) or not compiled.positional or compiled.positiontup is None:
        return None
    if compiled.literal_execute_params or compiled.post_compile_params or compiled.implicit_returning:
        return None
    defaults: list[tuple[str, Callable[[], Any]]] = []
    for columns, insert in ((compiled.insert_prefetch, True), (compiled.update_prefetch, False)):
        for column in columns:
            default = _default_of(column, insert=insert)
            if default is None:
                return None
            defaults.append((column.key, default))
    processors = compiled._bind_processors
    binds = tuple((name, cast(Callable[[Any], Any] | None, processors.get(name))) for name in compiled.positiontup)
    return _Prepared(compiled=compiled, sql=compiled.string, binds=binds, defaults=tuple(defaults),
                     binder=_binder(compiled, keys, binds, defaults))


def _binder(compiled: SQLCompiler, keys: Sequence[str], binds: Sequence[tuple[str, Callable[[Any], Any] | None]],
            defaults: Sequence[tuple[str, Callable[[], Any]]]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]] | None:
    """A function from a parameter dict to the bound tuple, generated once per prepared statement.

    `construct_params` walks every bind of the statement for every row (half of what a row cost
    to bind). The parameter names of a prepared statement are known, so where each value comes
    from is decided here, by the rules `construct_params` applies (the bind's key, then its name,
    in the caller's parameters; else its own value or callable; a Python-side default last), and
    the row becomes one tuple expression. A row missing one of those names fails the lookup and
    goes through `construct_params` instead, which raises or fills in as SQLAlchemy does.
    """
    # Names escaped for the dialect, parameters collected at compile time (SQLAlchemy merges them
    # under the caller's), post-compile rendering: rows of such statements take the general route.
    if compiled.escaped_bind_names or getattr(compiled, "_collected_params", None) or compiled._render_postcompile:
        return None
    present = set(keys)
    sources: dict[str, tuple[str, Any]] = {}
    for bind, name in compiled.bind_names.items():  # in SQLAlchemy's order: a later bind of a name wins
        if bind.key in present:
            sources[name] = ("read", bind.key)
        elif name in present:
            sources[name] = ("read", name)
        elif bind.required:
            return None
        elif bind.callable:
            sources[name] = ("call", lambda bind=bind: bind.effective_value)
        else:
            sources[name] = ("value", bind.value)
    for name, default in defaults:
        sources[name] = ("call", default)
    constants: list[Any] = []

    def constant(value: Any) -> str:
        constants.append(value)
        return f"c[{len(constants) - 1}]"

    parts = []
    for name, process in binds:
        if name not in sources:
            return None
        kind, arg = sources[name]
        value = f"row[{arg!r}]" if kind == "read" else constant(arg) if kind == "value" else f"{constant(arg)}()"
        parts.append(value if process is None else f"{constant(process)}({value})")
    namespace: dict[str, Any] = {}
    body = f"({', '.join(parts)},)" if parts else "()"
    exec(f"def bind(row, c=c):\n    return {body}", {"c": constants}, namespace)  # noqa: S102
    return cast(Callable[[Mapping[str, Any]], tuple[Any, ...]], namespace["bind"])


_prepared: dict[tuple[int, tuple[str, ...], bool, int], tuple[Any, Any, _Prepared | None]] = {}


def _prepared_for(connection: AsyncConnection, statement: Any, keys: tuple[str, ...], many: bool) -> _Prepared | None:
    # Keyed by the dialect instance too, as `fetch` is: the SQL and the bind processors are the
    # dialect's, and two engines' dialects may be configured apart.
    dialect = connection.dialect
    cache_key = (id(statement), keys, many, id(dialect))
    found = _prepared.get(cache_key)
    if found is not None and found[0] is statement and found[1] is dialect:
        return found[2]
    if len(_prepared) >= MAX_PREPARED:
        _prepared.clear()
    prepared = _prepare(connection, statement, keys, many)
    # The statement and dialect are kept with their entry, so their ids cannot be reused while cached.
    _prepared[cache_key] = (statement, dialect, prepared)
    return prepared


def _prepare_select(dialect: Dialect, statement: Any, keys: Sequence[str]) -> _Prepared | None:
    # Core SELECTs only: ORM-enabled ones have their own result handling (entities, loaders).
    if not isinstance(statement, Select) or statement._propagate_attrs:
        return None
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    if not isinstance(compiled, SQLCompiler) or not compiled.positional or compiled.positiontup is None:
        return None
    if compiled.literal_execute_params or compiled.post_compile_params:
        return None
    # SQLAlchemy matches such results' columns by name, not position: its own route decides.
    if (not compiled._ordered_columns or compiled._textual_ordered_columns or compiled._ad_hoc_textual
            or compiled._loose_column_name_matching):
        return None
    names = [entry.keyname for entry in compiled._result_columns]
    if not names or len(set(names)) != len(names):
        return None
    # The processors SQLAlchemy's cursor result applies in this positional case (sqlite3 reports
    # no column types, so the type code is None as there).
    processors = [entry.type._cached_result_processor(dialect, None) for entry in compiled._result_columns]
    bind_processors = compiled._bind_processors
    binds = tuple((name, cast(Callable[[Any], Any] | None, bind_processors.get(name)))
                  for name in compiled.positiontup)
    return _Prepared(compiled=compiled, sql=compiled.string, binds=binds, defaults=(),
                     binder=_binder(compiled, keys, binds, ()),
                     columns=SimpleResultMetaData(names, _processors=processors))


# Keyed by the statement's and the dialect's ids, both kept in the entry so neither id can be
# reused while cached (engines may differ in their JSON (de)serialisers: one entry per dialect).
# Statements used once so far wait in `_seen`, so those built per call never crowd out `_selects`.
_SelectKey = tuple[int, tuple[str, ...], int]
_seen: dict[_SelectKey, tuple[Any, Dialect]] = {}
_selects: dict[_SelectKey, tuple[Any, Dialect, _Prepared | None]] = {}


def fetch(raw: sqlite3.Connection, dialect: Dialect, statement: Any,
          params: Mapping[str, Any] | None = None) -> Result[Any] | None:
    """Run a Core SELECT on an in-loop sqlite3 connection; None when it is not one this covers.

    The read-side twin of `execute_dml`, for the engine's hot-path lookups (`LazyReads`), the
    queue's claim and probe, and reads inside a write transaction (`read_in`): compiled by
    SQLAlchemy once per statement and set of parameter names, bound by the same processors, every
    row fetched and closed at once, and handed back as a SQLAlchemy `Result` whose rows carry the
    keys and result processors SQLAlchemy's own result would (tested side by side). Statements it
    does not cover — ORM selects, expanding IN parameters, textual SQL — return None and the
    caller runs them through SQLAlchemy.

    A statement object takes this path from its second use on; the first returns None too. The
    hot path's statements are module or instance attributes, but a caller may build a statement for
    one call, and compiling that here would cost a full compile where SQLAlchemy's own route finds
    it in its compiled cache.
    """
    values = params or {}
    keys = tuple(values)
    cache_key = (id(statement), keys, id(dialect))
    found = _selects.get(cache_key)
    if found is not None and found[0] is statement and found[1] is dialect:
        prepared = found[2]
    else:
        seen = _seen.get(cache_key)
        if seen is None or seen[0] is not statement or seen[1] is not dialect:
            if len(_seen) >= MAX_PREPARED:
                _seen.clear()
            _seen[cache_key] = (statement, dialect)
            return None
        del _seen[cache_key]
        if len(_selects) >= MAX_PREPARED:
            _selects.clear()
        prepared = _prepare_select(dialect, statement, keys)
        _selects[cache_key] = (statement, dialect, prepared)
    if prepared is None:
        return None
    try:
        bound = _row(prepared, values)
    except Exception as err:  # a bind processor refused a value: reported as SQLAlchemy does
        raise StatementError(str(err), prepared.sql, params, err) from err
    try:
        cursor = raw.execute(prepared.sql, bound)
        try:
            rows = cursor.fetchall()
        finally:
            cursor.close()
    except sqlite3.Error as err:
        raise DBAPIError.instance(prepared.sql, bound, err, sqlite3.Error) from err
    return IteratorResult(cast(SimpleResultMetaData, prepared.columns), iter(rows))


def _row(prepared: _Prepared, params: Mapping[str, Any]) -> tuple[Any, ...]:
    if prepared.binder is not None:
        try:
            return prepared.binder(params)
        except KeyError:
            pass  # a row without one of the prepared names: SQLAlchemy's rules below decide
    values = prepared.compiled.construct_params(params, escape_names=False)
    for name, default in prepared.defaults:
        values[name] = default()
    return tuple(values[name] if process is None else process(values[name]) for name, process in prepared.binds)


async def execute_dml(connection: AsyncConnection | AsyncSession, statement: Any, params: Params = None) -> DmlResult:
    """Run an INSERT, UPDATE or DELETE: `params` a dict, or a list of dicts for executemany.

    An empty list writes nothing. An ORM session bound to a connection (a queue commit hook's)
    writes through that connection: a Core statement in a session never flushes the session
    first, so the order of writes is the same. Any other session, like any connection the direct
    path does not cover, runs it through SQLAlchemy as before.
    """
    many = isinstance(params, Sequence)
    rows = cast(Sequence[Mapping[str, Any]], params) if many else [cast(Mapping[str, Any], params or {})]
    if not rows:  # an empty executemany writes nothing (SQLAlchemy deprecates being asked to)
        return DmlResult(rowcount=0, lastrowid=None)
    prepared = None
    target = connection.bind if isinstance(connection, AsyncSession) else connection
    raw = inline_sqlite_connection(target) if isinstance(target, AsyncConnection) else None
    if raw is not None:
        prepared = _prepared_for(cast(AsyncConnection, target), statement, tuple(rows[0]), many)
    if raw is None or prepared is None:
        result = cast(CursorResult[Any], await connection.execute(statement, params))
        return DmlResult(rowcount=int(result.rowcount or 0), lastrowid=None if many else result.lastrowid)
    try:
        bound = [_row(prepared, row) for row in rows]
    except Exception as err:  # a bind processor refused a value: reported as SQLAlchemy does
        raise StatementError(str(err), prepared.sql, params, err) from err
    try:
        cursor = raw.executemany(prepared.sql, bound) if many else raw.execute(prepared.sql, bound[0])
    except sqlite3.Error as err:
        raise DBAPIError.instance(prepared.sql, bound if many else bound[0], err, sqlite3.Error) from err
    try:
        return DmlResult(rowcount=cursor.rowcount, lastrowid=None if many else cursor.lastrowid)
    finally:
        cursor.close()


async def execute_sql(connection: AsyncConnection, sql: str) -> None:
    """Run a statement without parameters (`BEGIN IMMEDIATE`): straight to sqlite3 on the writer.

    Through SQLAlchemy this one statement cost about 100 µs. Errors are raised as SQLAlchemy's.
    """
    raw = inline_sqlite_connection(connection)
    if raw is None:
        await connection.exec_driver_sql(sql)
        return
    run_raw_sql(raw, sql)


def data_version(raw: sqlite3.Connection) -> int:
    """SQLite's `PRAGMA data_version` on this connection: it changes when another connection
    (of any process) commits, so an unchanged value means nothing was written since it was read."""
    try:
        cursor = raw.execute("PRAGMA data_version")
        try:
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()
    except sqlite3.Error as err:
        raise DBAPIError.instance("PRAGMA data_version", (), err, sqlite3.Error) from err


async def flush_pending(session: AsyncSession) -> None:
    """`session.flush()` when the session holds changes: a flush with none still costs a greenlet.

    Commit hooks mostly write Core rows through `execute_dml`, leaving the session clean.
    """
    if session.new or session.dirty or session.deleted:
        await session.flush()


async def read_in(connection: AsyncConnection | AsyncSession, statement: Any,
                  params: Mapping[str, Any] | None = None) -> Result[Any]:
    """A Core SELECT inside the caller's write transaction: `fetch` on the in-loop SQLite writer.

    The read-side twin of `execute_dml` for commit hooks. Through SQLAlchemy such a read in a
    fresh session costs a greenlet and the session's own set-up (0.4 ms per completion at
    concurrency 1, for three rows); straight on sqlite3 it sees the same transaction. A
    session's pending ORM changes are flushed first, as autoflush would; every other
    connection, and statements `fetch` leaves alone, take SQLAlchemy's route.
    """
    if isinstance(connection, AsyncSession):
        await flush_pending(connection)
        target = connection.bind
    else:
        target = connection
    if isinstance(target, AsyncConnection):
        raw = inline_sqlite_connection(target)
        result = fetch(raw, target.dialect, statement, params) if raw is not None else None
        if result is not None:
            return result
    return cast(Result[Any], await connection.execute(statement, params))
