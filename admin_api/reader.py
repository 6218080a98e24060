"""The read path of lists and single-row GETs: Core statements on the fastest connection available.

On SQLite the async driver (aiosqlite) hands every call to a worker thread and back; for a read of
a few rows that round trip costs several times the query itself. SQLite in WAL mode never makes a
reader wait for a writer, so reads run inline on a plain sqlite3 connection opened read-only
(`query_only`), which keeps a paged list well under a millisecond. Writes, and every read on
MariaDB, go through the async engine.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Executable, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine


class Reader:
    """Runs read-only Core statements against the app's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sync: Engine | None = None
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            self._sync = create_engine(engine.url.set(drivername="sqlite"), connect_args={"timeout": 5.0})

            @event.listens_for(self._sync, "connect")
            def _read_only(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                try:
                    cursor.execute("PRAGMA query_only=ON")
                    cursor.execute("PRAGMA busy_timeout=5000")
                finally:
                    cursor.close()

    async def rows(self, *statements: Executable) -> list[list[Any]]:
        """The rows of each statement, in order, read in one connection."""
        if self._sync is not None:
            with self._sync.connect() as connection:
                return [list(connection.execute(statement)) for statement in statements]
        async with self.engine.connect() as connection:
            return [list(await connection.execute(statement)) for statement in statements]

    def dispose(self) -> None:
        """Close the inline connections."""
        if self._sync is not None:
            self._sync.dispose()
