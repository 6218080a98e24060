"""Shared fixtures: a clean environment, and real databases (SQLite file, MariaDB per-run database).

Under CI=true a missing MariaDB or Chromium fails the tests that need it instead of skipping them,
so a green CI always means they ran.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.fakes.fixtures"]

MARIADB_HOST = os.environ.get("TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("TEST_MARIADB_PORT", "3306"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ORCH_* variable leaks in from the developer's shell; state goes to a fresh temp dir."""
    for name in list(os.environ):
        if name.upper().startswith("ORCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.chdir(tmp_path)


def mariadb_available() -> bool:
    """Whether a MariaDB server answers on the test port."""
    try:
        with socket.create_connection((MARIADB_HOST, MARIADB_PORT), timeout=1):
            return True
    except OSError:
        return False


def require_mariadb() -> None:
    """Skip locally, fail under CI, when MariaDB is not reachable."""
    if mariadb_available():
        return
    message = f"MariaDB is not reachable on {MARIADB_HOST}:{MARIADB_PORT}"
    if IN_CI:
        pytest.fail(message + " (CI=true: tests that need MariaDB must run)")
    pytest.skip(message)


def require_chromium() -> str:
    """The Chromium binary; skip locally, fail under CI, when it is missing."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path:
        return path
    if IN_CI:
        pytest.fail("Debian chromium is not installed (CI=true: browser tests must run)")
    pytest.skip("Debian chromium is not installed")


def _admin_execute(sql: str) -> None:
    import pymysql

    connection = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="")
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
        connection.commit()
    finally:
        connection.close()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A MariaDB database of this test's own, dropped afterwards, so runs never collide."""
    require_mariadb()
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    _admin_execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        yield f"mysql+aiomysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    finally:
        _admin_execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in this test's temp directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 'orchestrator.db'}"


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on SQLite and on MariaDB."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'orchestrator.db'}"
        return
    yield request.getfixturevalue("mariadb_url")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head with initial data, once per test session."""
    import asyncio

    from bot.db.migrate import upgrade_to_head

    path = tmp_path_factory.mktemp("template") / "orchestrator.db"
    asyncio.run(upgrade_to_head(f"sqlite+aiosqlite:///{path}", backup_dir=None))
    return path


@pytest.fixture(scope="session")
def mariadb_template() -> Iterator[str]:
    """A MariaDB database migrated to head with initial data, once per test session."""
    import asyncio

    from bot.db.migrate import upgrade_to_head

    require_mariadb()
    name = f"orch_tpl_{uuid.uuid4().hex[:12]}"
    _admin_execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        asyncio.run(upgrade_to_head(f"mysql+aiomysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}", backup_dir=None))
        yield name
    finally:
        _admin_execute(f"DROP DATABASE IF EXISTS `{name}`")


def _clone_mariadb(template: str, target: str) -> None:
    """Copy every table (definition with its keys, then rows) from one database into another."""
    import pymysql

    connection = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="", database=target)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET FOREIGN_KEY_CHECKS=0")
            cursor.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=%s AND table_type='BASE TABLE'",
                (template,),
            )
            tables = [row[0] for row in cursor.fetchall()]
            for table in tables:
                cursor.execute(f"SHOW CREATE TABLE `{template}`.`{table}`")
                cursor.execute(cursor.fetchone()[1])
                cursor.execute(f"INSERT INTO `{target}`.`{table}` SELECT * FROM `{template}`.`{table}`")
            cursor.execute("SET FOREIGN_KEY_CHECKS=1")
        connection.commit()
    finally:
        connection.close()


@pytest.fixture
def migrated_db(request: pytest.FixtureRequest, db_url: str) -> str:
    """A database at the head revision with initial data, on each backend.

    Migrating costs seconds per database (more on MariaDB), so each session migrates one template
    per backend and every test gets a copy of it: same schema, same seed, its own data.
    """
    if db_url.startswith("sqlite"):
        import shutil

        shutil.copyfile(request.getfixturevalue("sqlite_template"), db_url.split(":///", 1)[1])
        return db_url
    _clone_mariadb(request.getfixturevalue("mariadb_template"), db_url.rsplit("/", 1)[1])
    return db_url
