"""The engine module's pure parts: URL normalisation and the server-version floor."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.db.engine import check_version_supported, is_sqlite, parse_server_version, parse_url
from bot.db.errors import UnsupportedDatabaseError


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("10.5.9-MariaDB", False),
        ("10.5.27-MariaDB-log", False),
        ("5.7.40", False),
        ("5.7.40-log", False),
        ("10.6.0-MariaDB", True),
        ("10.11.19-MariaDB-0+deb12u1", True),
        ("11.4.2-MariaDB-ubu2404", True),
        ("8.0.36", True),
        ("8.4.0-0ubuntu0.24.04.1", True),
    ],
)
def test_version_floor(version: str, supported: bool) -> None:
    if supported:
        check_version_supported(version)
        return
    with pytest.raises(UnsupportedDatabaseError) as caught:
        check_version_supported(version)
    message = str(caught.value)
    assert version in message
    assert "SKIP LOCKED" in message
    assert caught.value.hint is not None
    assert "SQLite" in caught.value.hint


def test_mysql_5_7_is_named_mysql_and_mariadb_10_5_mariadb() -> None:
    with pytest.raises(UnsupportedDatabaseError, match=r"^MySQL 5\.7\.40 is too old"):
        check_version_supported("5.7.40")
    with pytest.raises(UnsupportedDatabaseError, match=r"^MariaDB 10\.5\.9-MariaDB is too old"):
        check_version_supported("10.5.9-MariaDB")


def test_server_version_parsing() -> None:
    assert parse_server_version("10.11.19-MariaDB-0+deb12u1") == ("mariadb", (10, 11))
    assert parse_server_version("8.0.36") == ("mysql", (8, 0))
    with pytest.raises(UnsupportedDatabaseError, match="cannot read the server version"):
        parse_server_version("garbage")


def test_urls_are_normalised_to_the_async_drivers() -> None:
    assert parse_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    maria = parse_url("mariadb://u:p@db.example/orch")
    assert maria.drivername == "mysql+aiomysql"
    assert maria.query["charset"] == "utf8mb4"
    assert parse_url("mysql+aiomysql://u@h/d?charset=latin1").query["charset"] == "latin1"
    assert is_sqlite("sqlite+aiosqlite:///x.db")
    assert not is_sqlite("mysql+aiomysql://u@h/d")


def test_unsupported_backends_are_refused_without_echoing_the_password() -> None:
    with pytest.raises(UnsupportedDatabaseError, match="'postgresql' is not supported") as caught:
        parse_url("postgresql://user:hunter2@localhost/db")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(UnsupportedDatabaseError, match="cannot parse"):
        parse_url("not a url at all")


async def test_json_columns_store_pre_serialised_text_as_it_is(tmp_path: Path) -> None:
    """A `JSONText` is stored as its text (not serialised again); any other value as `json.dumps` makes it."""
    from sqlalchemy import JSON, Column, Integer, MetaData, Table, insert, select, text

    from bot.db.engine import JSONText, create_engine

    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("data", JSON))
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'j.db'}")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(table.metadata.create_all)
            await connection.execute(insert(table), [
                {"id": 1, "data": JSONText('{"a": [1, 2.5, null]}')}, {"id": 2, "data": {"a": [1, 2.5, None]}},
                {"id": 3, "data": JSONText("null")}, {"id": 4, "data": "plain"}])
            stored = {int(i): str(d) for i, d in await connection.execute(text("SELECT id, data FROM t"))}
            loaded = {int(i): d for i, d in await connection.execute(select(table.c.id, table.c.data))}
    finally:
        await engine.dispose()
    assert stored == {1: '{"a": [1, 2.5, null]}', 2: '{"a": [1, 2.5, null]}', 3: "null", 4: '"plain"'}
    assert loaded == {1: {"a": [1, 2.5, None]}, 2: {"a": [1, 2.5, None]}, 3: None, 4: "plain"}


async def test_the_in_loop_writer_leaves_checkpoints_to_a_thread_that_runs_them(tmp_path: Path) -> None:
    """The writer never checkpoints inside a commit; every so many commits a thread copies the log into the file."""
    import os

    from bot.db.engine import CHECKPOINT_EVERY_COMMITS, create_engine
    from bot.db.migrate import upgrade_to_head
    from bot.engine.queue import JobQueue, JobSpec

    url = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    await upgrade_to_head(url, backup_dir=None)
    engine = create_engine(url)
    try:
        queue = JobQueue(engine)
        writer = queue._writer
        assert writer is not None
        async with writer.engine.connect() as connection:
            assert (await connection.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
        file_before = os.path.getsize(tmp_path / "w.db")
        for index in range(CHECKPOINT_EVERY_COMMITS * 3):
            await queue.enqueue(JobSpec(kind="k", idempotency_key=f"job-{index}", payload={"text": "x" * 2000}))
        assert writer._checkpointing is not None
        await writer._checkpointing
        # The jobs' pages reached the database file itself, not only the write-ahead log.
        assert os.path.getsize(tmp_path / "w.db") > file_before
    finally:
        await engine.dispose()
