"""Migrations on real SQLite and MariaDB: up, down, idempotence, schema fidelity, backups, and the
clear refusals (newer, older, half-applied, unreachable)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection

from bot.db.engine import create_engine, is_sqlite, session_factory, verify_connection
from bot.db.errors import DatabaseUnreachableError, MigrationError, RevisionMismatchError
from bot.db.migrate import (
    check_at_head,
    current_revision,
    downgrade,
    head_revision,
    upgrade_to_head,
)
from bot.db.models import Base, CredentialTemplate, SpecializedAi, User
from bot.db.seed import SPECIALIZED_AIS, credential_templates
from tests.conftest import MARIADB_HOST, MARIADB_PORT, _admin_execute, require_mariadb

REPO_ROOT = Path(__file__).resolve().parents[2]


async def _inspect(url: str, reader: Callable[[Connection], Any]) -> Any:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(reader)
    finally:
        await engine.dispose()


async def _execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def _tables(url: str) -> set[str]:
    return set(await _inspect(url, lambda c: inspect(c).get_table_names()))


async def _counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            counts = {}
            for table in ("users", "ai_providers", "specialized_ais", "credential_templates"):
                counts[table] = (await connection.execute(text(f"SELECT COUNT(*) FROM {table}"))).scalar_one()
            return counts
    finally:
        await engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def shared_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One migrated database per backend for the tests that only read it or put it back as it was
    (a MariaDB migration takes seconds)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('shared') / 'orchestrator.db'}"
        asyncio.run(upgrade_to_head(url, backup_dir=None))
        yield url
        return
    require_mariadb()
    name = f"orch_test_migr_{uuid.uuid4().hex[:10]}"
    _admin_execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        url = f"mysql+aiomysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
        asyncio.run(upgrade_to_head(url, backup_dir=None))
        yield url
    finally:
        _admin_execute(f"DROP DATABASE IF EXISTS `{name}`")


async def test_up_down_up_is_clean_and_idempotent(db_url: str, tmp_path: Path) -> None:
    first = await upgrade_to_head(db_url, backup_dir=None)
    assert first.from_revision is None
    assert first.to_revision == head_revision()
    assert first.applied == ("0001", "0002", "0003", "0004", "0005")
    assert head_revision() == "0005"
    assert set(Base.metadata.tables) <= await _tables(db_url)

    again = await upgrade_to_head(db_url, backup_dir=None)
    assert again.applied == ()
    assert again.from_revision == again.to_revision == head_revision()
    assert all(count == 0 for count in again.seeded.values())
    assert await check_at_head(db_url) == head_revision()

    await _execute(
        db_url,
        "INSERT INTO tasks (title, description, status, priority, origin, created_at, updated_at) "
        "VALUES ('precious work', '', 'pending', 0, '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    )
    down = await downgrade(db_url, "base", backup_dir=tmp_path / "backups")
    assert down.to_revision is None
    _assert_backup_holds_the_task(db_url, down.backup_path)
    assert await _tables(db_url) == {"alembic_version"}
    assert await current_revision(db_url) is None
    # An older schema (here: base, after the downgrade) is named with the fix.
    with pytest.raises(RevisionMismatchError) as older:
        await check_at_head(db_url)
    assert f"needs revision {head_revision()!r}" in str(older.value)
    assert older.value.hint is not None
    assert "orchestrator migrate" in older.value.hint

    up = await upgrade_to_head(db_url, backup_dir=None)
    assert up.applied == ("0001", "0002", "0003", "0004", "0005")
    assert set(Base.metadata.tables) <= await _tables(db_url)


def _assert_backup_holds_the_task(url: str, backup: Path | None) -> None:
    """The copy written before a downgrade is a valid database with the rows about to be dropped."""
    assert backup is not None
    if is_sqlite(url):
        copy = sqlite3.connect(backup)
        try:
            assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert copy.execute("SELECT title FROM tasks").fetchall() == [("precious work",)]
            assert copy.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
        finally:
            copy.close()
        return
    dump = backup.read_text(encoding="utf-8")
    assert "CREATE TABLE `tasks`" in dump
    assert "precious work" in dump
    assert "CREATE TABLE `alembic_version`" in dump
    assert f"('{head_revision()}')" in dump


def _reflect(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    schema: dict[str, Any] = {}
    for table in inspector.get_table_names():
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)}
        indexes = inspector.get_indexes(table)
        uniques |= {tuple(i["column_names"]) for i in indexes if i["unique"]}
        schema[table] = {
            "columns": {c["name"] for c in inspector.get_columns(table)},
            "foreign_keys": {
                (
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    tuple(fk["referred_columns"]),
                    (fk.get("options", {}).get("ondelete") or "NO ACTION").upper(),
                )
                for fk in inspector.get_foreign_keys(table)
            },
            "uniques": uniques,
            "indexes": {tuple(i["column_names"]) for i in indexes},
        }
    return schema


async def test_every_table_column_key_and_index_of_the_models_exists(shared_db: str) -> None:
    reflected = await _inspect(shared_db, _reflect)
    for table in Base.metadata.sorted_tables:
        assert table.name in reflected, f"table {table.name} missing"
        actual = reflected[table.name]
        assert actual["columns"] == {c.name for c in table.columns}, table.name
        for fk in table.foreign_key_constraints:
            expected = (
                tuple(c.name for c in fk.columns),
                fk.referred_table.name,
                tuple(e.column.name for e in fk.elements),
                (fk.ondelete or "NO ACTION").upper(),
            )
            assert expected in actual["foreign_keys"], f"{table.name}: {expected}"
        expected_uniques = {
            tuple(c.name for c in constraint.columns)
            for constraint in table.constraints
            if constraint.__class__.__name__ == "UniqueConstraint"
        } | {tuple(c.name for c in index.columns) for index in table.indexes if index.unique}
        assert expected_uniques <= actual["uniques"], table.name
        expected_indexes = {tuple(c.name for c in index.columns) for index in table.indexes}
        assert expected_indexes <= actual["indexes"] | actual["uniques"], table.name


async def test_the_engine_query_indexes_exist(shared_db: str) -> None:
    reflected = await _inspect(shared_db, _reflect)
    assert ("task_id", "status") in reflected["subtasks"]["indexes"]
    assert ("status", "priority", "created_at") in reflected["tasks"]["indexes"]
    for column in ("task_id", "model_id", "level"):
        assert (column, "created_at") in reflected["execution_logs"]["indexes"]
    assert ("metric", "at") in reflected["metric_samples"]["indexes"]
    assert ("model_id", "category") in reflected["ai_quality_metrics"]["uniques"]
    assert ("provider_id", "model_key") in reflected["ai_models"]["uniques"]
    assert ("platform", "platform_user_id") in reflected["user_identities"]["uniques"]


async def test_sparse_indexes_leave_out_null_rows_on_sqlite_and_still_serve_lookups(sqlite_url: str) -> None:
    """A row written with the column NULL adds nothing to its index; a lookup by value uses it."""
    await upgrade_to_head(sqlite_url, backup_dir=None)
    path = sqlite_url.split("///", 1)[1]
    with contextlib.closing(sqlite3.connect(path)) as db:
        sql = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
        for name, column in (("ix_tasks_template_id", "template_id"), ("ix_jobs_lease_owner", "lease_owner"),
                             ("ix_subtasks_executor_model_id", "executor_model_id"),
                             ("ix_credit_usage_account_id_at", "account_id")):
            assert sql[name].endswith(f"WHERE {column} IS NOT NULL"), sql[name]
        db.execute("INSERT INTO tasks (title, description, status, priority, origin, created_at, updated_at) "
                    "VALUES ('t', '', 'pending', 0, '{}', '2026-01-01', '2026-01-01')")
        db.commit()
        # Counting an index's entries: the NULL row is not among them.
        assert db.execute("SELECT count(*) FROM tasks INDEXED BY ix_tasks_template_id "
                          "WHERE template_id IS NOT NULL").fetchone() == (0,)
        for query, index in (("SELECT id FROM tasks WHERE template_id = 3", "ix_tasks_template_id"),
                             ("SELECT id FROM jobs WHERE lease_expires_at < '2026-01-01'",
                              "ix_jobs_lease_expires_at"),
                             ("SELECT id FROM jobs WHERE lease_owner = 'w1'", "ix_jobs_lease_owner"),
                             ("SELECT id FROM subtasks WHERE validator_model_id = 2",
                              "ix_subtasks_validator_model_id")):
            plan = " ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {query}"))
            assert index in plan, (query, plan)


async def test_models_and_migrations_agree(shared_db: str) -> None:
    """Autogenerate against the migrated database finds nothing to add: no drift."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def diff(connection: Connection) -> list[Any]:
        from migrations.filters import include_name

        context = MigrationContext.configure(
            connection, opts={"compare_type": is_sqlite(shared_db), "include_name": include_name}
        )
        return [
            change
            for change in compare_metadata(context, Base.metadata)
            # MariaDB creates an index for each foreign key on its own; the models do not list them.
            if not (isinstance(change, tuple) and change[0] == "remove_index")
        ]

    assert await _inspect(shared_db, diff) == []


async def test_initial_data_is_idempotent_and_keeps_user_edits(shared_db: str) -> None:
    migrated_db = shared_db
    counts = await _counts(migrated_db)
    assert counts == {
        "users": 1,
        "ai_providers": 1,
        "specialized_ais": counts["specialized_ais"],
        "credential_templates": 13,
    }
    assert counts["specialized_ais"] >= 6

    engine = create_engine(migrated_db)
    try:
        async with session_factory(engine)() as session:
            planner = (await session.execute(select(SpecializedAi).where(SpecializedAi.name == "planner"))).scalar_one()
            planner.system_prompt = "my own planner prompt"
            github = (
                await session.execute(select(CredentialTemplate).where(CredentialTemplate.service == "github"))
            ).scalar_one()
            github.display_name = "GitHub Enterprise"
            # A deleted template is reference data and comes back; a deleted AI role too.
            writer = (await session.execute(select(SpecializedAi).where(SpecializedAi.name == "writer"))).scalar_one()
            await session.delete(writer)
            await session.commit()
    finally:
        await engine.dispose()

    report = await upgrade_to_head(migrated_db, backup_dir=None)
    assert report.seeded == {"users": 0, "ai_providers": 0, "specialized_ais": 1, "credential_templates": 0}
    assert await _counts(migrated_db) == counts

    engine = create_engine(migrated_db)
    try:
        async with session_factory(engine)() as session:
            planner = (await session.execute(select(SpecializedAi).where(SpecializedAi.name == "planner"))).scalar_one()
            assert planner.system_prompt == "my own planner prompt"
            github = (
                await session.execute(select(CredentialTemplate).where(CredentialTemplate.service == "github"))
            ).scalar_one()
            assert github.display_name == "GitHub Enterprise"
            # Put the shared database back as the seed made it.
            planner.system_prompt = next(s for s in SPECIALIZED_AIS if s["name"] == "planner")["system_prompt"]
            github.display_name = "GitHub"
            await session.commit()
    finally:
        await engine.dispose()


async def test_default_admin_is_not_recreated_once_another_admin_exists(sqlite_url: str) -> None:
    await upgrade_to_head(sqlite_url, backup_dir=None)
    await _execute(
        sqlite_url,
        "INSERT INTO users (username, display_name, role, language, is_active, created_at, updated_at) "
        "VALUES ('alice', 'Alice', 'admin', 'pt-BR', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "DELETE FROM users WHERE username = 'admin'",
    )
    report = await upgrade_to_head(sqlite_url, backup_dir=None)
    assert report.seeded["users"] == 0
    engine = create_engine(sqlite_url)
    try:
        async with session_factory(engine)() as session:
            names = set((await session.execute(select(User.username))).scalars())
    finally:
        await engine.dispose()
    assert names == {"alice"}


def test_credential_templates_are_complete_and_point_at_the_real_endpoints() -> None:
    templates = {t["service"]: t for t in credential_templates()}
    assert set(templates) == {
        "github", "google_drive", "gmail", "google_sheets", "google_calendar", "notion",
        "slack", "discord", "dropbox", "onedrive", "trello", "openai", "openrouter",
    }  # fmt: skip
    for service, template in templates.items():
        schema = template["fields_schema"]
        assert schema["type"] == "object", service
        assert "$ref" not in json.dumps(schema), service
        assert schema["properties"], service
        if template["auth_type"] == "oauth2":
            oauth = template["oauth"]
            assert oauth["authorize_url"].startswith("https://"), service
            assert oauth["token_url"].startswith("https://"), service
            assert isinstance(oauth["scopes"], list), service
    google = templates["gmail"]["oauth"]
    assert google["authorize_url"] == "https://accounts.google.com/o/oauth2/v2/auth"
    assert google["token_url"] == "https://oauth2.googleapis.com/token"
    assert google["revoke_url"] == "https://oauth2.googleapis.com/revoke"
    assert templates["github"]["oauth"]["authorize_url"] == "https://github.com/login/oauth/authorize"
    assert templates["notion"]["oauth"]["authorize_url"] == "https://api.notion.com/v1/oauth/authorize"
    assert templates["trello"]["auth_type"] == "api_key"
    assert templates["trello"]["oauth"] is None
    assert set(templates["trello"]["fields_schema"]["required"]) == {"api_key", "token"}


async def test_sqlite_backup_before_upgrade_holds_the_existing_rows(sqlite_url: str, tmp_path: Path) -> None:
    # A database that already holds data (here another application's table) is copied first.
    await _execute(
        sqlite_url,
        "CREATE TABLE legacy_notes (id INTEGER PRIMARY KEY, body TEXT)",
        "INSERT INTO legacy_notes (body) VALUES ('keep me'), ('and me')",
    )
    backups = tmp_path / "backups"
    report = await upgrade_to_head(sqlite_url, backup_dir=backups)
    assert report.backup_path is not None
    assert report.backup_path.parent == backups
    assert str(report.backup_path) in report.as_dict()["backup_path"]
    copy = sqlite3.connect(report.backup_path)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT body FROM legacy_notes ORDER BY id").fetchall() == [("keep me",), ("and me",)]
        assert copy.execute("SELECT name FROM sqlite_master WHERE name = 'tasks'").fetchone() is None
    finally:
        copy.close()

    again = await upgrade_to_head(sqlite_url, backup_dir=backups)
    assert again.backup_path is None
    assert "nothing changed" in again.backup.note
    assert len(list(backups.iterdir())) == 1


async def test_newer_database_is_refused_and_left_alone(shared_db: str) -> None:
    await _execute(shared_db, "UPDATE alembic_version SET version_num = '9999_from_the_future'")
    try:
        await _assert_refused_as_newer(shared_db)
    finally:
        await _execute(shared_db, f"UPDATE alembic_version SET version_num = '{head_revision()}'")
    assert await check_at_head(shared_db) == head_revision()


async def _assert_refused_as_newer(shared_db: str) -> None:
    with pytest.raises(RevisionMismatchError) as caught:
        await check_at_head(shared_db)
    message = str(caught.value)
    assert "9999_from_the_future" in message
    assert "newer version" in message
    assert caught.value.hint is not None
    assert "upgrade the orchestrator" in caught.value.hint
    assert "never downgraded automatically" in caught.value.hint

    with pytest.raises(RevisionMismatchError, match="newer version"):
        await upgrade_to_head(shared_db, backup_dir=None)
    assert await current_revision(shared_db) == "9999_from_the_future"
    assert set(Base.metadata.tables) <= await _tables(shared_db)


async def test_never_migrated_database_is_reported_with_the_fix(db_url: str) -> None:
    if is_sqlite(db_url):  # an empty file: a missing one is refused before connecting (below)
        engine = create_engine(db_url)
        try:
            await verify_connection(engine)
        finally:
            await engine.dispose()
    with pytest.raises(RevisionMismatchError) as never:
        await check_at_head(db_url)
    assert "no schema yet" in str(never.value)
    assert never.value.hint is not None
    assert "orchestrator migrate" in never.value.hint


async def test_a_missing_sqlite_file_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "orchestrator.db"
    with pytest.raises(RevisionMismatchError, match="does not exist") as missing:
        await check_at_head(f"sqlite+aiosqlite:///{path}")
    assert missing.value.hint is not None and "orchestrator migrate" in missing.value.hint
    assert not path.parent.exists()


async def test_half_applied_schema_is_detected_not_papered_over(db_url: str) -> None:
    from bot.db.models import User as _User

    engine = create_engine(db_url)
    try:
        async with engine.begin() as connection:
            # Tables exist, no alembic_version: what a crashed non-transactional run leaves.
            await connection.run_sync(lambda c: _User.__table__.create(c))
            await connection.run_sync(lambda c: Base.metadata.tables["credential_templates"].create(c))
    finally:
        await engine.dispose()
    for attempt in (upgrade_to_head(db_url, backup_dir=None), check_at_head(db_url)):
        with pytest.raises(MigrationError) as caught:
            await attempt
        message = str(caught.value)
        assert "half-migrated" in message
        assert "credential_templates, users" in message
        assert caught.value.hint is not None
        assert "orchestrator migrate" in caught.value.hint
    assert await _tables(db_url) == {"users", "credential_templates"}


async def test_head_revision_with_missing_tables_is_inconsistent(shared_db: str) -> None:
    await _execute(shared_db, "DROP TABLE metric_samples")
    try:
        with pytest.raises(MigrationError, match="tables are missing: metric_samples"):
            await check_at_head(shared_db)
        with pytest.raises(MigrationError, match="tables are missing: metric_samples"):
            await upgrade_to_head(shared_db, backup_dir=None)
    finally:
        engine = create_engine(shared_db)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(lambda c: Base.metadata.tables["metric_samples"].create(c))
        finally:
            await engine.dispose()
    assert await check_at_head(shared_db) == head_revision()


async def test_a_failing_migration_leaves_sqlite_untouched(sqlite_url: str) -> None:
    # A view squatting on a table name makes CREATE TABLE users fail half-way through.
    await _execute(sqlite_url, "CREATE VIEW users AS SELECT 1 AS id")
    with pytest.raises(MigrationError) as caught:
        await upgrade_to_head(sqlite_url, backup_dir=None)
    assert "rolled back" in str(caught.value)
    assert "unchanged" in str(caught.value)
    assert await _tables(sqlite_url) == set()  # nothing half-written, not even alembic_version


@pytest.mark.mariadb
async def test_a_failing_migration_on_mariadb_names_the_tables_left_behind(mariadb_url: str) -> None:
    await _execute(mariadb_url, "CREATE VIEW users AS SELECT 1 AS id")
    with pytest.raises(MigrationError) as caught:
        await upgrade_to_head(mariadb_url, backup_dir=None)
    message = str(caught.value)
    assert "cannot roll back" in message
    left = sorted((await _tables(mariadb_url)) & set(Base.metadata.tables))
    assert left, "MariaDB should have kept the tables created before the failure"
    assert ", ".join(left) in message
    assert caught.value.hint is not None
    assert "restore the backup" in caught.value.hint


async def test_unreachable_mariadb_is_one_clear_error() -> None:
    with pytest.raises(DatabaseUnreachableError, match="cannot connect to"):
        await upgrade_to_head("mysql+aiomysql://orch:secret@127.0.0.1:1/orch", backup_dir=None)


def _run_cli(*args: str, data_dir: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ORCH_")}
    env["ORCH_DATA_DIR"] = str(data_dir)
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_migrate_twice(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = _run_cli("migrate", data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    assert f"→ {head_revision()}" in first.stdout
    assert "credential_templates 13" in first.stdout
    assert (data_dir / "orchestrator.db").is_file()

    second = _run_cli("migrate", "--json", data_dir=data_dir)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["applied"] == []
    assert report["to_revision"] == head_revision()
    assert report["backup_path"] is None


def test_cli_unreachable_database_exits_2_without_traceback(tmp_path: Path) -> None:
    result = _run_cli(
        "migrate",
        data_dir=tmp_path / "data",
        extra_env={"ORCH_DATABASE_URL": "mysql+aiomysql://orch:hunter2@127.0.0.1:1/orch"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: cannot connect to mysql+aiomysql://orch:***@127.0.0.1:1/orch")
    assert lines[1].strip().startswith("fix:")
    assert len(lines) == 2
    assert "hunter2" not in result.stderr + result.stdout


def test_cli_db_commands_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    data_dir = tmp_path / "data"
    monkeypatch.setenv("ORCH_DATA_DIR", str(data_dir))
    main(["db", "current"])
    assert "empty (never migrated)" in capsys.readouterr().out
    main(["migrate", "--no-backup"])
    capsys.readouterr()
    main(["db", "current", "--json"])
    state = json.loads(capsys.readouterr().out)
    assert state["revision"] == state["head"] == head_revision()
    assert state["state"] == "up to date"
    main(["db", "history"])
    assert head_revision() in capsys.readouterr().out
    main(["db", "check"])
    assert "ok:" in capsys.readouterr().out

    main(["db", "downgrade", "base", "--yes"])
    out = capsys.readouterr().out
    backups = list((data_dir / "backups").iterdir())
    assert len(backups) == 1
    assert str(backups[0]) in out
    assert "base (no tables)" in out

    with pytest.raises(SystemExit) as exited:
        main(["db", "check"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the database")
    assert "orchestrator migrate" in err


def test_cli_downgrade_asks_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from bot.cli import cli

    data_dir = tmp_path / "data"
    monkeypatch.setenv("ORCH_DATA_DIR", str(data_dir))
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate", "--no-backup"]).exit_code == 0
    refused = runner.invoke(cli, ["db", "downgrade", "base"], input="n\n")
    assert refused.exit_code == 1
    assert "Downgrade" in refused.output
    assert "Aborted" in refused.output
    connection = sqlite3.connect(data_dir / "orchestrator.db")
    try:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
    finally:
        connection.close()
    assert not (data_dir / "backups").exists()


async def test_sqlite_paths_that_cannot_hold_a_database_are_clear_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DatabaseUnreachableError, match="cannot create the folder") as caught:
        await upgrade_to_head(f"sqlite+aiosqlite:///{blocker / 'orchestrator.db'}", backup_dir=None)
    assert caught.value.hint is not None
    assert "writable directory" in caught.value.hint

    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(DatabaseUnreachableError, match="file is not a database"):
        await upgrade_to_head(f"sqlite+aiosqlite:///{not_sqlite}", backup_dir=tmp_path / "backups")
    assert not_sqlite.read_text().startswith("these are my notes")


def test_autogenerate_check_finds_no_drift(capsys: pytest.CaptureFixture[str]) -> None:
    from migrations.autogenerate import main

    assert main(["--check"]) == 0
    assert "the models match the newest revision" in capsys.readouterr().out
    assert main([]) == 2


def test_credential_template_schemas_are_valid_and_accept_real_looking_input() -> None:
    from jsonschema import Draft202012Validator, ValidationError

    templates = {t["service"]: t for t in credential_templates()}
    for template in templates.values():
        Draft202012Validator.check_schema(template["fields_schema"])
    github = Draft202012Validator(templates["github"]["fields_schema"])
    github.validate({"personal_access_token": "github_pat_11ABCDEFG0123456789_abcdefXYZ"})
    github.validate({"client_id": "Iv1.0123456789abcdef", "client_secret": "s3cr3t"})
    with pytest.raises(ValidationError):
        github.validate({"client_id": "Iv1.0123456789abcdef"})  # a client id alone cannot authorise
    trello = Draft202012Validator(templates["trello"]["fields_schema"])
    trello.validate({"api_key": "0123456789abcdef0123456789abcdef", "token": "ATTA" + "a1" * 32})
    with pytest.raises(ValidationError):
        trello.validate({"api_key": "0123456789abcdef0123456789abcdef"})
    google = Draft202012Validator(templates["google_drive"]["fields_schema"])
    google.validate({"client_id": "123456789-abc123.apps.googleusercontent.com", "client_secret": "x"})
    with pytest.raises(ValidationError):
        google.validate({"client_id": "123456789-abc123.apps.googleusercontent.com", "client_secret": "x", "extra": 1})
