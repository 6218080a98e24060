"""Async engines for the two supported databases, tuned the way the queue needs them.

SQLite (embedded default): WAL so readers never block the writer, foreign keys enforced, a busy
timeout so concurrent writers wait instead of failing. MariaDB/MySQL (production, several daemons
sharing one queue): utf8mb4, pre-ping, and a version floor because the durable queue claims work
with `SELECT … FOR UPDATE SKIP LOCKED` (MariaDB ≥ 10.6, MySQL ≥ 8.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiosqlite
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from bot.db.errors import DatabaseUnreachableError, UnsupportedDatabaseError
from bot.logs import get_logger
from bot.settings import DatabaseSettings, redact_url

log = get_logger(__name__)

MIN_MARIADB = (10, 6)
MIN_MYSQL = (8, 0)


class JSONText:
    """A value already serialised to JSON, bound to JSON columns as that text.

    Values the queue validates by serialising them (step results, checkpoints, job results) are
    stored from that same text instead of being serialised a second time by the column type. Not a
    `str`, so an engine built without `dump_json` fails loudly instead of storing a quoted string.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"JSONText({self.text[:60]!r})"


def dump_json(value: Any) -> str:
    """The JSON columns' serialiser: `json.dumps`, or the text of a `JSONText` as it is."""
    if type(value) is JSONText:
        return value.text
    return json.dumps(value)


def parse_url(url: str) -> URL:
    """Parse and normalise a database URL, refusing drivers the orchestrator does not support."""
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise UnsupportedDatabaseError(
            f"cannot parse the database URL {redact_url(url)!r}",
            hint="use sqlite+aiosqlite:///path/to.db or mysql+aiomysql://user:pass@host/db",
        ) from err
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("mysql", "mariadb"):
        query = dict(parsed.query)
        query.setdefault("charset", "utf8mb4")
        return parsed.set(drivername="mysql+aiomysql", query=query)
    raise UnsupportedDatabaseError(
        f"database backend {backend!r} is not supported",
        hint="use SQLite (sqlite+aiosqlite://) or MariaDB/MySQL (mysql+aiomysql://)",
    )


def is_sqlite(engine_or_url: AsyncEngine | URL | str) -> bool:
    """Whether the engine or URL is SQLite (the queue and migrations differ)."""
    if isinstance(engine_or_url, AsyncEngine):
        return engine_or_url.dialect.name == "sqlite"
    url = make_url(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    return url.get_backend_name() == "sqlite"


def create_engine(url: str, *, settings: DatabaseSettings | None = None) -> AsyncEngine:
    """Build the async engine for `url` with the pragmas and pool options each backend needs."""
    options = settings or DatabaseSettings()
    parsed = parse_url(url)
    kwargs: dict[str, Any] = {"echo": options.echo, "json_serializer": dump_json}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            from pathlib import Path

            folder = Path(database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DatabaseUnreachableError(
                    f"cannot create the folder {folder} for the SQLite database: {err.strerror or err}",
                    hint="point ORCH_DATA_DIR or database_url at a writable directory",
                ) from err
        kwargs["connect_args"] = {"timeout": options.sqlite_busy_timeout_ms / 1000}
        try:
            engine = create_async_engine(parsed, **kwargs)
        except NoSuchModuleError as err:  # pragma: no cover - aiosqlite is a hard dependency
            raise UnsupportedDatabaseError(str(err), hint="pip install aiosqlite") from err
        _install_sqlite_pragmas(engine, busy_timeout_ms=options.sqlite_busy_timeout_ms)
        return engine
    kwargs.update(
        pool_pre_ping=True,
        pool_size=options.pool_size,
        max_overflow=options.pool_size,
        pool_recycle=3600,
        connect_args={"connect_timeout": int(options.connect_timeout_s)},
    )
    return create_async_engine(parsed, **kwargs)


def _install_sqlite_pragmas(
    engine: AsyncEngine, *, busy_timeout_ms: int, query_only: bool = False, autocheckpoint: bool = True
) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _set_pragmas(dbapi_connection, busy_timeout_ms=busy_timeout_ms, query_only=query_only,
                     autocheckpoint=autocheckpoint)


def _set_pragmas(dbapi_connection: Any, *, busy_timeout_ms: int, query_only: bool, autocheckpoint: bool) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if query_only:
            cursor.execute("PRAGMA query_only=ON")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
    finally:
        cursor.close()


class _InlineSqliteConnection(aiosqlite.Connection):
    """aiosqlite's interface, but every call runs on the calling (event-loop) thread.

    aiosqlite hands each call to a worker thread and back: three or four thread hops per
    statement, each waiting for a turn of a busy event loop. For the queue's short write
    transactions (µs of SQLite work each, no fsync with WAL + synchronous=NORMAL) those hops were
    all of the cost. Running inline is safe only where a call can never wait for a lock: the
    writer's connection has no busy handler, and it takes the write lock with `BEGIN IMMEDIATE`,
    retried asynchronously (see `JobQueue._write`); once held, nothing else in a WAL write
    transaction waits. Relies on aiosqlite's `_execute`/`_connect` seam (tests cover it).
    """

    def __init__(self, connector: Any) -> None:
        super().__init__(connector, iter_chunk_size=64)

    def __await__(self) -> Any:
        return self._connect().__await__()

    async def _connect(self) -> _InlineSqliteConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    def stop(self) -> None:  # type: ignore[override]
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self.stop()

    def __del__(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def inline_sqlite_connection(connection: AsyncConnection) -> sqlite3.Connection | None:
    """The sqlite3 connection under `connection` if it runs in-loop and is inside a transaction.

    Statements sent to it directly take part in that transaction exactly as SQLAlchemy's would
    (see `bot.db.direct`); None for every other kind of connection.
    """
    sync = connection.sync_connection
    return None if sync is None else inline_sqlite_driver(sync)


def inline_sqlite_driver(sync: Connection) -> sqlite3.Connection | None:
    """`inline_sqlite_connection` for SQLAlchemy's synchronous side of a connection."""
    if not sync.in_transaction():
        return None
    driver = sync.connection.driver_connection
    if type(driver) is not _InlineSqliteConnection:
        return None
    return driver._connection


# Commits by the in-loop writer between two checkpoints of the write-ahead log (in a thread).
CHECKPOINT_EVERY_COMMITS = 50


def _checkpoint(database: str) -> None:
    """Copy the write-ahead log into the database file without waiting for anyone (PASSIVE)."""
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=0)) as connection:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as err:  # busy or gone: the next one catches up
        log.debug("wal checkpoint skipped", error=str(err))


@dataclass(eq=False)
class SqliteWriter:
    """One in-loop connection for all of a database's short queue writes, and their lock.

    Its connection never checkpoints the write-ahead log itself: SQLite does that inside the
    commit that crosses 1,000 pages, copying them and syncing the file, and on this connection
    that stalled the event loop for milliseconds every few dozen commits. `committed` runs a
    checkpoint in a thread instead, every `CHECKPOINT_EVERY_COMMITS` commits.

    The connection is checked out once and kept, with SQLAlchemy's side of a transaction left
    open (on SQLite that side issues no SQL), and each write transaction is begun and ended on
    sqlite3 itself (`begin_immediate`, `end`). Checking it out and back in for every transaction
    went through SQLAlchemy's pool and its reset-on-return, each in a greenlet of its own: about
    35 µs of a 40 µs empty transaction, and a subtask is four or five of them. Between two
    transactions sqlite3 holds no transaction, so nothing is locked and checkpoints proceed.
    """

    engine: AsyncEngine
    lock: asyncio.Lock
    database: str
    commits: int = 0
    _checkpointing: asyncio.Future[None] | None = None
    _held: AsyncConnection | None = None

    def committed(self) -> None:
        """Count a commit of this writer; every so many, checkpoint the log off the event loop."""
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY_COMMITS or (
                self._checkpointing is not None and not self._checkpointing.done()):
            return
        self._checkpointing = asyncio.get_running_loop().run_in_executor(None, _checkpoint, self.database)

    async def connection(self) -> AsyncConnection:
        """The kept connection, inside SQLAlchemy's transaction (opened again if a caller ended it).

        Call with `lock` held. A connection SQLAlchemy invalidated (a disconnect) is replaced.
        """
        held = self._held
        if held is None or held.closed or held.invalidated:
            held = self._held = await self.engine.connect()
            assert held.sync_connection is not None
            # Given back when the writer is collected: invalidating closes sqlite3 at once, with
            # no I/O to await, so no greenlet is needed there and the pool has nothing to warn about.
            weakref.finalize(self, _release, held.sync_connection)
        if not held.in_transaction():
            await held.begin()
        return held

    @staticmethod
    def begin_immediate(connection: AsyncConnection) -> None:
        """Take SQLite's write lock (raises at once when another connection holds it: no busy handler)."""
        raw = inline_sqlite_connection(connection)
        assert raw is not None, "the writer's connection is in-loop and inside SQLAlchemy's transaction"
        run_raw_sql(raw, "BEGIN IMMEDIATE")

    @staticmethod
    def end(connection: AsyncConnection, *, commit: bool) -> None:
        """Commit or roll back sqlite3's transaction; SQLAlchemy's side stays open for the next one.

        A failed commit is rolled back (nothing half-written stays open) and raised as
        SQLAlchemy's error, as `Connection.commit` raised it.
        """
        # sqlite3's own state, whatever SQLAlchemy's side says: a caller may have ended that
        # side (a rollback through SQLAlchemy) and begun sqlite3 again without it.
        sync = connection.sync_connection
        if sync is None or sync.closed or sync.invalidated:
            return
        driver = sync.connection.driver_connection
        raw = driver._connection if isinstance(driver, _InlineSqliteConnection) else None
        if raw is None or not raw.in_transaction:
            return
        if not commit:
            run_raw_sql(raw, "ROLLBACK")
            return
        try:
            run_raw_sql(raw, "COMMIT")
        except DBAPIError:
            if raw.in_transaction:
                run_raw_sql(raw, "ROLLBACK")
            raise


def run_raw_sql(raw: sqlite3.Connection, sql: str) -> None:
    """A statement without parameters straight to sqlite3, its errors raised as SQLAlchemy's."""
    try:
        raw.execute(sql).close()
    except sqlite3.Error as err:
        raise DBAPIError.instance(sql, (), err, sqlite3.Error) from err


def _release(connection: Connection) -> None:
    with contextlib.suppress(Exception):  # the interpreter may be shutting down
        connection.invalidate()


_writers: weakref.WeakKeyDictionary[Any, SqliteWriter] = weakref.WeakKeyDictionary()
_readers: weakref.WeakKeyDictionary[Any, AsyncEngine] = weakref.WeakKeyDictionary()
# A reader waits at most this long (blocking the loop) in the rare moments WAL readers can be
# busy (another connection recovering the WAL index after a crash).
READER_BUSY_TIMEOUT_MS = 100


def _file_database(engine: AsyncEngine) -> str | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _inline_engine(engine: AsyncEngine, database: str, *, busy_timeout_ms: int, pool_size: int) -> AsyncEngine:
    def connector() -> sqlite3.Connection:
        return sqlite3.connect(database, timeout=busy_timeout_ms / 1000, check_same_thread=False)

    async def creator() -> _InlineSqliteConnection:
        connection: _InlineSqliteConnection = await _InlineSqliteConnection(connector)
        return connection

    return create_async_engine(
        engine.url, async_creator=creator, pool_size=pool_size, max_overflow=pool_size, echo=engine.echo,
        json_serializer=dump_json,
    )


def sqlite_reader(engine: AsyncEngine) -> AsyncEngine | None:
    """Read-only in-loop connections to a file SQLite database (None otherwise).

    In WAL mode a reader never waits for the writer, so reads can run on the event loop without
    aiosqlite's thread hops; `query_only` makes a write through them fail at once instead of
    waiting for the write lock. For hot paths that only read (the engine's per-subtask lookups).
    """
    database = _file_database(engine)
    if database is None:
        return None
    reader = _readers.get(engine.sync_engine)
    if reader is None:
        reader = _inline_engine(engine, database, busy_timeout_ms=READER_BUSY_TIMEOUT_MS, pool_size=4)
        _install_sqlite_pragmas(reader, busy_timeout_ms=READER_BUSY_TIMEOUT_MS, query_only=True)
        _readers[engine.sync_engine] = reader
    return reader


@asynccontextmanager
async def read_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for a few hot-path reads: in-loop and read-only on a SQLite file, else the engine's.

    The in-loop connection is opened and closed explicitly: `async with engine.connect()` (and an
    ORM session's exit) closes in a shielded task, one trip round a busy event loop per use during
    which other readers had to open more connections (the pool overflowed and churned: opening
    one costs about a millisecond of pragmas). Here nothing leaves the loop turn.
    """
    reader = sqlite_reader(engine)
    if reader is None:
        async with engine.connect() as connection:
            yield connection
        return
    connection = await reader.connect().start()
    try:
        yield connection
    finally:
        await connection.close()


class RawReaders:
    """In-loop read-only sqlite3 connections to one database file, outside SQLAlchemy's pool.

    `sqlite_reader`'s pool hands out connections through SQLAlchemy's async layer: a greenlet to
    check one out, another to return it (its reset-on-return rollback), one per statement. Hot-path
    reads that `bot.db.direct.fetch` can run take a connection from here instead: the same pragmas
    (read-only, WAL, a short busy timeout), no greenlet. Used from the event loop's thread only.
    """

    def __init__(self, database: str, *, keep: int = 4) -> None:
        self.database = database
        self.keep = keep
        self._idle: list[sqlite3.Connection] = []

    def take(self) -> sqlite3.Connection:
        """An idle connection, or a new one."""
        if self._idle:
            return self._idle.pop()
        connection = sqlite3.connect(self.database, timeout=READER_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        try:
            _set_pragmas(connection, busy_timeout_ms=READER_BUSY_TIMEOUT_MS, query_only=True, autocheckpoint=True)
        except BaseException:
            connection.close()
            raise
        return connection

    def give(self, connection: sqlite3.Connection) -> None:
        """Back to the idle list (at most `keep` stay open)."""
        try:
            if connection.in_transaction:
                connection.rollback()
        except sqlite3.Error:
            connection.close()
            return
        if len(self._idle) < self.keep:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Close the idle connections."""
        while self._idle:
            self._idle.pop().close()


_raw_readers: weakref.WeakKeyDictionary[Any, RawReaders] = weakref.WeakKeyDictionary()


def raw_readers(engine: AsyncEngine) -> RawReaders | None:
    """The `RawReaders` of a file SQLite engine (None for other engines and in-memory databases)."""
    found = _raw_readers.get(engine.sync_engine)
    if found is not None:
        return found
    database = _file_database(engine)
    if database is None:
        return None
    found = _raw_readers[engine.sync_engine] = RawReaders(database)
    return found


class Reads(Protocol):
    """Where read statements run: an ORM session, a connection, or `LazyReads`."""

    def execute(self, statement: Any, parameters: Any = None, /) -> Awaitable[Any]:
        """Run one statement; returns its result."""
        ...


class LazyReads:
    """Reads that take their connection only at the first statement, from `read_connection`.

    The engine's lookups are mostly served from short-lived caches; a checkout costs a pool round
    trip (and a ping on MariaDB) even when no statement follows.
    """

    def __init__(self, engine: AsyncEngine, stack: AsyncExitStack) -> None:
        self._engine = engine
        self._stack = stack
        self._connection: AsyncConnection | None = None
        self._raw: sqlite3.Connection | None = None

    @property
    def dialect_name(self) -> str:
        """The database's dialect (sqlite, mysql)."""
        return self._engine.dialect.name

    async def execute(self, statement: Any, parameters: Any = None, /) -> Any:
        """Run one statement, taking a connection first if needed.

        On a SQLite file, a statement `bot.db.direct.fetch` covers runs on a raw in-loop reader
        (`RawReaders`) and returns the same rows as SQLAlchemy would; any other goes through
        `read_connection`.
        """
        if self._engine.dialect.name == "sqlite" and (parameters is None or isinstance(parameters, Mapping)):
            if self._raw is None:
                pool = raw_readers(self._engine)
                if pool is not None:
                    self._raw = pool.take()
                    self._stack.callback(pool.give, self._raw)
            if self._raw is not None:
                from bot.db.direct import fetch

                result = fetch(self._raw, self._engine.dialect, statement, parameters)
                if result is not None:
                    return result
        if self._connection is None:
            self._connection = await self._stack.enter_async_context(read_connection(self._engine))
        return await self._connection.execute(statement, parameters)


@asynccontextmanager
async def lazy_reads(engine: AsyncEngine) -> AsyncIterator[LazyReads]:
    """`LazyReads` on `engine`, its connection (if one was taken) released on exit."""
    async with AsyncExitStack() as stack:
        yield LazyReads(engine, stack)


def sqlite_writer(engine: AsyncEngine) -> SqliteWriter | None:
    """The shared in-loop writer of a file SQLite engine (None for in-memory databases).

    Every JobQueue on the same engine shares it, so writes of one process queue on one asyncio
    lock instead of colliding in SQLite's busy handler.
    """
    database = _file_database(engine)
    if database is None:
        return None
    writer = _writers.get(engine.sync_engine)
    if writer is None:
        # busy timeout 0: no busy handler, so a call never blocks the event loop waiting for a lock.
        inline = _inline_engine(engine, database, busy_timeout_ms=0, pool_size=1)
        _install_sqlite_pragmas(inline, busy_timeout_ms=0, autocheckpoint=False)
        writer = SqliteWriter(engine=inline, lock=asyncio.Lock(), database=database)
        _writers[engine.sync_engine] = writer
    return writer


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (results outlive the transaction)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def parse_server_version(version: str) -> tuple[str, tuple[int, int]]:
    """Split a `SELECT VERSION()` string into (flavour, (major, minor))."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise UnsupportedDatabaseError(f"cannot read the server version {version!r}")
    flavour = "mariadb" if "mariadb" in version.lower() else "mysql"
    return flavour, (int(match.group(1)), int(match.group(2)))


def check_version_supported(version: str) -> None:
    """Refuse servers without SKIP LOCKED, which the durable queue depends on."""
    flavour, numbers = parse_server_version(version)
    floor = MIN_MARIADB if flavour == "mariadb" else MIN_MYSQL
    if numbers < floor:
        name = "MariaDB" if flavour == "mariadb" else "MySQL"
        wanted = ".".join(map(str, floor))
        raise UnsupportedDatabaseError(
            f"{name} {version} is too old: the task queue needs SELECT … FOR UPDATE SKIP LOCKED",
            hint=f"upgrade to {name} {wanted} or newer, or use the embedded SQLite database",
        )


async def verify_connection(engine: AsyncEngine) -> str:
    """Connect once, check the server can hold our data, and return its version string."""
    try:
        async with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                version = (await connection.execute(text("select sqlite_version()"))).scalar_one()
                return f"SQLite {version}"
            version = str((await connection.execute(text("select version()"))).scalar_one())
    except (DBAPIError, OSError) as err:
        sqlite = engine.dialect.name == "sqlite"
        raise DatabaseUnreachableError(
            f"cannot {'open' if sqlite else 'connect to'} "
            f"{engine.url.render_as_string(hide_password=True)}: {getattr(err, 'orig', err)}",
            hint=(
                "check the file's path and permissions, and that it is a SQLite database"
                if sqlite
                else "check that the server runs and the URL, user and password are right"
            ),
        ) from err
    check_version_supported(version)
    return version
