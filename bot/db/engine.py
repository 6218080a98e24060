"""Async engines for the two supported databases, tuned the way the queue needs them.

SQLite (embedded default): WAL so readers never block the writer, foreign keys enforced, a busy
timeout so concurrent writers wait instead of failing. MariaDB/MySQL (production, several daemons
sharing one queue): utf8mb4, pre-ping, and a version floor because the durable queue claims work
with `SELECT … FOR UPDATE SKIP LOCKED` (MariaDB ≥ 10.6, MySQL ≥ 8.0).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from bot.db.errors import DatabaseUnreachableError, UnsupportedDatabaseError
from bot.settings import DatabaseSettings, redact_url

MIN_MARIADB = (10, 6)
MIN_MYSQL = (8, 0)


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
    kwargs: dict[str, Any] = {"echo": options.echo}
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


def _install_sqlite_pragmas(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()


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
