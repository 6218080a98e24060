"""Schema migrations: upgrade to head (backing up first), downgrade, and checks the daemon runs.

Alembic's configuration is built here, not read from alembic.ini, and the scripts are found
through the installed `migrations` package, so `orchestrator migrate` works from any directory.

Safety rules:
- Back up before changing a database that holds anything (SQLite online backup; mariadb-dump).
- SQLite: the whole upgrade runs in one transaction with foreign keys off (batch table copies
  would otherwise cascade deletes), then `PRAGMA foreign_key_check` must come back clean before it
  commits; a failure leaves the file as it was.
- MariaDB cannot roll back DDL: a failure is reported with exactly which tables now exist.
- A database newer than this code is never downgraded automatically.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from bot.db.engine import create_engine, is_sqlite, parse_url, session_factory, verify_connection
from bot.db.errors import MigrationError, RevisionMismatchError
from bot.settings import redact_url

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.ext.asyncio import AsyncEngine

    from bot.settings import Settings

VERSION_TABLE = "alembic_version"
MIGRATE_HINT = "run `orchestrator migrate` (it backs the database up first)"


@dataclass(frozen=True, slots=True)
class BackupResult:
    """Where a backup went, or why there is none."""

    path: Path | None
    note: str


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What an upgrade or downgrade did, for the CLI and the daemon's start-up log."""

    database: str
    server_version: str
    from_revision: str | None
    to_revision: str | None
    applied: tuple[str, ...]
    backup: BackupResult
    seeded: dict[str, int] = field(default_factory=dict)

    @property
    def backup_path(self) -> Path | None:
        """The backup file, if one was written."""
        return self.backup.path

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return {
            "database": self.database,
            "server_version": self.server_version,
            "from_revision": self.from_revision,
            "to_revision": self.to_revision,
            "applied": list(self.applied),
            "backup_path": str(self.backup.path) if self.backup.path else None,
            "backup_note": self.backup.note,
            "seeded": dict(self.seeded),
        }


@dataclass(frozen=True, slots=True)
class _DbState:
    tables: frozenset[str]
    revisions: tuple[str, ...]

    @property
    def revision(self) -> str | None:
        return self.revisions[0] if self.revisions else None


def migrations_dir() -> Path:
    """The directory of the installed `migrations` package."""
    import migrations

    # `__path__`, not `__file__`: an editable install may expose the package as a namespace.
    for entry in migrations.__path__:
        candidate = Path(entry)
        if (candidate / "env.py").is_file():
            return candidate.resolve()
    raise MigrationError(  # pragma: no cover - only a broken installation gets here
        "the migration scripts are not installed (migrations/env.py is missing)",
        hint="reinstall the orchestrator",
    )


def alembic_config() -> Config:
    """Alembic's configuration, built in code (the URL is never put in it: it may hold a password)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    return config


@functools.cache
def _script() -> ScriptDirectory:
    # Parsing the revision files costs ~0.1 s; they do not change while the process runs.
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001_initial
        raise MigrationError("no migration scripts were found", hint="reinstall the orchestrator")
    return head


def _known_revisions() -> set[str]:
    return {script.revision for script in _script().walk_revisions()}


def _expected_tables() -> frozenset[str]:
    from bot.db.models import Base

    return frozenset(Base.metadata.tables)


def _read_state(connection: Connection) -> _DbState:
    from alembic.runtime.migration import MigrationContext

    tables = frozenset(inspect(connection).get_table_names())
    revisions: tuple[str, ...] = ()
    if VERSION_TABLE in tables:
        revisions = tuple(MigrationContext.configure(connection).get_current_heads())
    return _DbState(tables=tables, revisions=revisions)


def _engine(url: str, settings: Settings | None) -> AsyncEngine:
    return create_engine(url, settings=settings.database if settings else None)


def _migration_engine(url: str, settings: Settings | None) -> AsyncEngine:
    """An engine whose SQLite connections run DDL inside a real transaction, foreign keys off."""
    engine = _engine(url, settings)
    if engine.dialect.name == "sqlite":
        sync_engine = engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin, so
            # CREATE/ALTER/DROP are inside BEGIN … COMMIT too. Foreign keys can only be switched
            # outside a transaction; batch migrations copy tables, which must not cascade.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA foreign_keys=OFF")
            finally:
                cursor.close()

        @event.listens_for(sync_engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def _state(engine: AsyncEngine) -> _DbState:
    async with engine.connect() as connection:
        return await connection.run_sync(_read_state)


def _ours(state: _DbState) -> list[str]:
    return sorted(state.tables & _expected_tables())


def _half_applied_error(state: _DbState, *, url: str, backup_dir: Path | None) -> MigrationError:
    present = _ours(state)
    where = f" in {backup_dir}" if backup_dir else ""
    if is_sqlite(url):
        fix = (
            f"restore the newest backup{where} over {parse_url(url).database}, or move the file "
            "away to start empty, then run `orchestrator migrate`"
        )
    else:
        fix = (
            f"restore the newest backup{where} (mariadb < backup.sql), or drop these tables, "
            "then run `orchestrator migrate`"
        )
    return MigrationError(
        f"the database is half-migrated: {len(present)} of the orchestrator's tables exist "
        f"({', '.join(present)}) but it records no schema revision — a previous migration stopped "
        "part-way or the tables were created by hand",
        hint=fix,
    )


def _check_state(state: _DbState, *, url: str, backup_dir: Path | None = None) -> None:
    """Refuse states no upgrade can safely start from (half-applied, forked, newer)."""
    if len(state.revisions) > 1:
        raise MigrationError(
            f"the database records several schema revisions at once ({', '.join(state.revisions)})",
            hint="restore a backup taken by `orchestrator migrate`; this code never creates branches",
        )
    revision = state.revision
    if revision is None:
        if _ours(state):
            raise _half_applied_error(state, url=url, backup_dir=backup_dir)
        return
    if revision not in _known_revisions():
        raise RevisionMismatchError(
            f"the database schema is at revision {revision!r}, which this version of the "
            f"orchestrator does not know (its newest is {head_revision()!r}): the database was "
            "migrated by a newer version",
            hint="upgrade the orchestrator to the version that migrated this database; it is never "
            "downgraded automatically (a newer version's `orchestrator db downgrade` can)",
        )
    if revision == head_revision():
        missing = sorted(_expected_tables() - state.tables)
        if missing:
            raise MigrationError(
                f"the database says it is at revision {revision!r} but tables are missing: {', '.join(missing)}",
                hint="restore the newest backup taken by `orchestrator migrate`",
            )


async def current_revision(url: str, *, settings: Settings | None = None) -> str | None:
    """The revision the database is at (None when it has never been migrated)."""
    engine = _engine(url, settings)
    try:
        await verify_connection(engine)
        state = await _state(engine)
    finally:
        await engine.dispose()
    if len(state.revisions) > 1:
        _check_state(state, url=url)
    return state.revision


def missing_sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names when it does not exist (connecting would create it empty)."""
    if not is_sqlite(url):
        return None
    database = parse_url(url).database
    if not database or database == ":memory:":
        return None
    path = Path(database).expanduser()
    return None if path.exists() else path


async def check_at_head(url: str, *, settings: Settings | None = None) -> str:
    """Make sure the schema is exactly what this code expects; the daemon calls it at start-up.

    A SQLite file that does not exist is refused before connecting: connecting would create it
    (and its folder), leaving an empty database where the operator expects none.
    """
    head = head_revision()
    if await asyncio.to_thread(missing_sqlite_file, url) is not None:
        raise RevisionMismatchError(
            f"the database {redact_url(url)} does not exist (this version needs revision {head!r})",
            hint=MIGRATE_HINT,
        )
    engine = _engine(url, settings)
    try:
        await verify_connection(engine)
        state = await _state(engine)
    finally:
        await engine.dispose()
    _check_state(state, url=url)
    if state.revision is None:
        raise RevisionMismatchError(
            f"the database {redact_url(url)} has no schema yet (this version needs revision {head!r})",
            hint=MIGRATE_HINT,
        )
    if state.revision != head:
        behind = [s.revision for s in _script().iterate_revisions(head, state.revision)]
        raise RevisionMismatchError(
            f"the database schema is at revision {state.revision!r}, older than this version's "
            f"{head!r} ({len(behind)} migration(s) behind)",
            hint=MIGRATE_HINT,
        )
    return head


# ---------------------------------------------------------------------------------------------
# Backups


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _sqlite_backup(source: Path, target: Path) -> None:
    # sqlite3's online backup API: a consistent copy even while the daemon writes (WAL included).
    source_connection = sqlite3.connect(source)
    try:
        target_connection = sqlite3.connect(target)
        try:
            source_connection.backup(target_connection)
        finally:
            target_connection.close()
    finally:
        source_connection.close()


def _dump_tool() -> str | None:
    return shutil.which("mariadb-dump") or shutil.which("mysqldump")


async def _mariadb_backup(url: str, target: Path, tool: str) -> None:
    parsed = parse_url(url)
    args = [
        tool,
        "--single-transaction",
        "--routines",
        "--triggers",
        "--hex-blob",
        "--default-character-set=utf8mb4",
        f"--host={parsed.host or '127.0.0.1'}",
        f"--port={parsed.port or 3306}",
        f"--user={parsed.username or 'root'}",
    ]
    socket_path = parsed.query.get("unix_socket")
    if isinstance(socket_path, str):
        args.append(f"--socket={socket_path}")
    args.append(f"--result-file={target}")
    args.append(parsed.database or "")
    environment = dict(os.environ)
    # The password goes through the environment, never the command line (visible in `ps`).
    environment.pop("MYSQL_PWD", None)
    if parsed.password:
        environment["MYSQL_PWD"] = str(parsed.password)
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        await asyncio.to_thread(target.unlink, missing_ok=True)
        raise MigrationError(
            f"{Path(tool).name} failed (exit {process.returncode}): {stderr.decode(errors='replace').strip()[:500]}",
            hint="fix the dump problem, or back the database up yourself and migrate without a backup directory",
        )


async def backup_database(url: str, backup_dir: Path, *, label: str = "pre-migrate") -> BackupResult:
    """Copy the database to a timestamped file in `backup_dir`, before anything changes it."""
    await asyncio.to_thread(backup_dir.mkdir, parents=True, exist_ok=True)
    stamp = _timestamp()
    if is_sqlite(url):
        database = parse_url(url).database
        if not database or database == ":memory:":
            return BackupResult(None, "in-memory database: nothing to back up")
        target = backup_dir / f"orchestrator-{label}-{stamp}.db"
        try:
            await asyncio.to_thread(_sqlite_backup, Path(database), target)
        except sqlite3.Error as err:
            target.unlink(missing_ok=True)
            raise MigrationError(
                f"could not back up {database}: {err}",
                hint="check the disk space and the permissions of the backup directory",
            ) from err
        return BackupResult(target, f"SQLite online backup written to {target}")
    tool = _dump_tool()
    if tool is None:
        return BackupResult(
            None,
            "no dump tool was found (mariadb-dump or mysqldump): NO BACKUP was taken; install "
            "the MariaDB client to get automatic backups",
        )
    target = backup_dir / f"orchestrator-{label}-{stamp}.sql"
    await _mariadb_backup(url, target, tool)
    return BackupResult(target, f"{Path(tool).name} dump written to {target}")


# ---------------------------------------------------------------------------------------------
# Upgrade and downgrade


def _run_alembic(connection: Connection, action: Callable[[Config], None]) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    action(config)


def _foreign_key_violations(connection: Connection) -> list[str]:
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    return [f"{row[0]} row {row[1]} → {row[2]}" for row in rows[:10]]


async def _apply(engine: AsyncEngine, *, url: str, action: Callable[[Config], None]) -> None:
    """Run an Alembic command: atomically on SQLite, with a precise report on MariaDB failure."""
    sqlite = engine.dialect.name == "sqlite"
    try:
        async with engine.connect() as connection:
            # Begin here so Alembic joins this one transaction instead of committing its own.
            await connection.begin()
            await connection.run_sync(_run_alembic, action)
            if sqlite:
                violations = await connection.run_sync(_foreign_key_violations)
                if violations:
                    await connection.rollback()
                    raise MigrationError(
                        "the migration would break foreign keys, so it was rolled back: " + "; ".join(violations),
                        hint="fix or delete the rows named, then migrate again",
                    )
            await connection.commit()
    except MigrationError:
        raise
    except (SQLAlchemyError, OSError) as err:
        detail = getattr(err, "orig", None) or err
        if sqlite:
            raise MigrationError(
                f"the migration failed and was rolled back; the database is unchanged: {detail}",
                hint="report this error; the database is as it was before",
            ) from err
        after = await _state(engine)
        raise MigrationError(
            f"the migration failed part-way ({detail}); MariaDB cannot roll back schema changes, "
            f"so the database now records revision {after.revision!r} and has these orchestrator "
            f"tables: {', '.join(_ours(after)) or 'none'}",
            hint="restore the backup taken just before (mariadb < the .sql file), or drop the "
            "tables the failed revision created, then run `orchestrator migrate` again",
        ) from err


async def upgrade_to_head(url: str, *, backup_dir: Path | None, settings: Settings | None = None) -> MigrationReport:
    """Bring the database to the newest schema and insert the initial data; safe to run again."""
    from alembic import command

    engine = _migration_engine(url, settings)
    try:
        version = await verify_connection(engine)
        before = await _state(engine)
        _check_state(before, url=url, backup_dir=backup_dir)
        head = head_revision()
        applied: tuple[str, ...] = ()
        backup = BackupResult(None, "already at the newest schema: nothing changed, no backup needed")
        if before.revision != head:
            applied = tuple(reversed([s.revision for s in _script().iterate_revisions(head, before.revision)]))
            if not before.tables - {VERSION_TABLE}:
                backup = BackupResult(None, "new database: nothing to back up")
            elif backup_dir is None:
                backup = BackupResult(None, "no backup directory given: no backup taken")
            else:
                backup = await backup_database(url, backup_dir)
            await _apply(engine, url=url, action=lambda cfg: command.upgrade(cfg, "head"))
        after = await _state(engine)
        _check_state(after, url=url, backup_dir=backup_dir)
    finally:
        await engine.dispose()
    seeded = await _seed(url, settings)
    return MigrationReport(
        database=redact_url(url),
        server_version=version,
        from_revision=before.revision,
        to_revision=after.revision,
        applied=applied,
        backup=backup,
        seeded=seeded,
    )


async def _seed(url: str, settings: Settings | None) -> dict[str, int]:
    from bot.db.seed import seed_initial_data

    engine = _engine(url, settings)
    try:
        for attempt in (1, 2):
            try:
                async with session_factory(engine)() as session:
                    counts = await seed_initial_data(session, settings=settings)
                    await session.commit()
                    return counts
            except IntegrityError:
                # Another process seeded the same rows between our read and our insert; the
                # second pass sees them and inserts only what is still missing.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        await engine.dispose()


async def downgrade(
    url: str,
    revision: str,
    *,
    backup_dir: Path | None = None,
    settings: Settings | None = None,
) -> MigrationReport:
    """Take the schema back to `revision` ("base" removes every table), backing up first."""
    from alembic import command
    from alembic.util import CommandError

    engine = _migration_engine(url, settings)
    try:
        version = await verify_connection(engine)
        before = await _state(engine)
        _check_state(before, url=url, backup_dir=backup_dir)
        if before.revision is None:
            raise MigrationError(
                "the database has no schema revision: there is nothing to downgrade",
                hint="`orchestrator db current` shows the state",
            )
        target = None if revision == "base" else revision
        if target is not None and target not in _known_revisions():
            raise MigrationError(
                f"unknown revision {revision!r}",
                hint="pick one listed by `orchestrator db history`, or `base`",
            )
        script = _script()
        applied = tuple(s.revision for s in script.iterate_revisions(before.revision, target))
        if target is not None and target != before.revision and not applied:
            raise MigrationError(
                f"revision {revision!r} is not older than the current {before.revision!r}",
                hint="downgrade only goes back; use `orchestrator migrate` to go forward",
            )
        backup = BackupResult(None, "no backup directory given: no backup taken")
        if applied and backup_dir is not None:
            backup = await backup_database(url, backup_dir, label=f"pre-downgrade-{before.revision}")
        if applied:
            try:
                await _apply(engine, url=url, action=lambda cfg: command.downgrade(cfg, revision))
            except CommandError as err:  # pragma: no cover - guarded by the checks above
                raise MigrationError(str(err)) from err
        after = await _state(engine)
    finally:
        await engine.dispose()
    return MigrationReport(
        database=redact_url(url),
        server_version=version,
        from_revision=before.revision,
        to_revision=after.revision,
        applied=applied,
        backup=backup,
    )


def history() -> list[dict[str, str | None]]:
    """Every revision this code ships, newest first."""
    return [
        {"revision": s.revision, "down_revision": s.down_revision, "message": s.doc}  # type: ignore[dict-item]
        for s in _script().walk_revisions()
    ]


async def table_row_counts(url: str, *, settings: Settings | None = None) -> dict[str, int]:
    """How many rows each orchestrator table holds (for `db current` and backups' reports)."""
    engine = _engine(url, settings)
    try:
        async with engine.connect() as connection:
            state = await connection.run_sync(_read_state)
            counts: dict[str, int] = {}
            for table in _ours(state):
                quoted = engine.dialect.identifier_preparer.quote(table)
                result = await connection.execute(text(f"SELECT COUNT(*) FROM {quoted}"))
                counts[table] = int(result.scalar_one())
            return counts
    except DBAPIError as err:
        raise MigrationError(f"cannot count rows: {err.orig}") from err
    finally:
        await engine.dispose()
