"""The read path of lists and single-row GETs: Core statements on the fastest connection available.

On SQLite the async driver (aiosqlite) hands every call to a worker thread and back; for a read of
a few rows that round trip costs several times the query itself. SQLite in WAL mode never makes a
reader wait for a writer, so reads run inline on one plain sqlite3 connection opened read-only
(`query_only`) in autocommit mode: each statement sees the latest committed data, and there is no
pool checkout or rollback per request. Writes, and every read on MariaDB, go through the async
engine.

List totals (`COUNT(*)` over the filters) are cached per table and filter set for
`totals_ttl` seconds: a client paging through a large table pays for one count, not one per page.
Writes through the API invalidate the table's totals at once; rows written by other components
(the engine's logs) show up in totals within the TTL (the rows themselves are never cached).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from sqlalchemy import ClauseElement, Engine, Executable, PoolProxiedConnection, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

_MAX_TOTALS = 4096


class Reader:
    """Runs read-only Core statements against the app's database."""

    def __init__(self, engine: AsyncEngine, *, totals_ttl: float = 2.0) -> None:
        self.engine = engine
        self.totals_ttl = totals_ttl
        self._totals: dict[tuple[str, Hashable], tuple[float, int]] = {}
        self._sync: Engine | None = None
        self._raw: PoolProxiedConnection | None = None
        self._compiled: dict[Hashable, tuple[str, tuple[tuple[str, Any, Any], ...]]] = {}
        self._connection: Any = None  # the sqlite3 connection behind _raw
        self._cursor: Any = None  # the one cursor run_cached executes on
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            # One connection used only from the event loop's thread; autocommit so no snapshot is
            # held between requests and nothing needs rolling back when it is returned.
            self._sync = create_engine(
                engine.url.set(drivername="sqlite"), poolclass=StaticPool, isolation_level="AUTOCOMMIT",
                connect_args={"timeout": 5.0, "check_same_thread": False},
            )

            @event.listens_for(self._sync, "connect")
            def _read_only(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                try:
                    cursor.execute("PRAGMA query_only=ON")
                    cursor.execute("PRAGMA busy_timeout=5000")
                finally:
                    cursor.close()

    @property
    def inline_sqlite(self) -> bool:
        """Whether reads run inline on SQLite (where rows can be rendered as JSON by the database)."""
        return self._sync is not None

    def run_cached(self, key: Hashable, build: Callable[[], ClauseElement], values: dict[str, Any]) -> list[Any]:
        """Rows of a statement compiled once per `key` (its shape), run on the raw sqlite3 connection.

        `build()` returns the statement with named bind parameters; `values` fills them per call
        and goes through the column types' bind processors (datetimes, enums, booleans), exactly
        as SQLAlchemy would bind them. Building, caching and executing a Core statement costs
        ~130 µs per request; this costs ~10 µs. SQLite inline reads only (see `inline_sqlite`).
        """
        assert self._sync is not None
        entry = self._compiled.get(key)
        if entry is None:
            compiled: Any = build().compile(dialect=self._sync.dialect)
            names = tuple(compiled.positiontup or ())
            processors = tuple(compiled.binds[name].type._cached_bind_processor(self._sync.dialect)
                               for name in names)
            # Parameters the caller never passes (the OFFSET 0 SQLAlchemy adds to LIMIT) take the
            # value they were compiled with; resolving them once spares construct_params per call.
            # (construct_params keys them by their escaped name where a name needed escaping.)
            escaped = compiled.escaped_bind_names or {}
            compiled_values = compiled.construct_params(_check=False)
            slots = tuple((name, compiled_values[escaped.get(name, name)], process)
                          for name, process in zip(names, processors, strict=True))
            entry = self._compiled[key] = (str(compiled), slots)
        sql, slots = entry
        positional = [values.get(name, default) if process is None else process(values.get(name, default))
                      for name, default, process in slots]
        cursor = self._cursor
        if cursor is None:
            self._raw = self._sync.raw_connection()
            self._connection = self._raw.driver_connection
            # One cursor for every read: each call fetches all its rows before the next one runs
            # (same thread, no await in between), and this spares a cursor object per request.
            cursor = self._cursor = self._connection.cursor()
        found: list[Any] = cursor.execute(sql, positional).fetchall()
        return found

    async def rows(self, *statements: Executable) -> list[list[Any]]:
        """The rows of each statement, in order, read in one connection."""
        if self._sync is not None:
            with self._sync.connect() as connection:
                return [list(connection.execute(statement)) for statement in statements]
        async with self.engine.connect() as connection:
            return [list(await connection.execute(statement)) for statement in statements]

    def cached_total(self, table: str, key: Hashable) -> int | None:
        """A total counted less than `totals_ttl` seconds ago for this table and filter set."""
        found = self._totals.get((table, key))
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    def remember_total(self, table: str, key: Hashable, total: int) -> None:
        """Keep a freshly counted total."""
        if self.totals_ttl <= 0:
            return
        if len(self._totals) >= _MAX_TOTALS:
            self._totals.clear()
        self._totals[(table, key)] = (time.monotonic() + self.totals_ttl, total)

    def invalidate(self, *tables: str) -> None:
        """Forget the totals of these tables (after a write through the API)."""
        for cached in [cached for cached in self._totals if cached[0] in tables]:
            self._totals.pop(cached, None)

    def dispose(self) -> None:
        """Close the inline connection."""
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None
            self._connection = None
        if self._sync is not None:
            self._sync.dispose()
