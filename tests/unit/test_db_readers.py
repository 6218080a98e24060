"""`read_connection`: the engine's hot-path reads on a SQLite file run on the event loop, read only,
without opening a connection per use (real SQLite files)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from bot.db.engine import create_engine, read_connection, sqlite_reader


async def test_reads_see_committed_rows_and_cannot_write(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
            await connection.execute(text("INSERT INTO notes (body) VALUES ('first')"))
        async with read_connection(engine) as reads:
            assert (await reads.execute(text("SELECT body FROM notes"))).scalar_one() == "first"
            with pytest.raises(OperationalError, match="attempt to write a readonly database"):
                await reads.execute(text("INSERT INTO notes (body) VALUES ('never')"))
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_many_concurrent_readers_reuse_one_connection(tmp_path: Path) -> None:
    """Closing never leaves the loop turn, so interleaved jobs never need a second connection
    (an ORM session's exit did, and the pool overflowed and re-opened one per use)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    reader = sqlite_reader(engine)
    assert reader is not None
    opened: list[Any] = []
    event.listen(reader.sync_engine, "connect", lambda connection, record: opened.append(connection))
    try:
        async def job(n: int) -> int:
            total = 0
            for _ in range(5):
                async with read_connection(engine) as reads:
                    total += int((await reads.execute(text("SELECT :n"), {"n": n})).scalar_one())
                await asyncio.sleep(0)  # other jobs run between the reads
            return total

        results = await asyncio.gather(*(job(n) for n in range(64)))
        assert results == [5 * n for n in range(64)]
        assert len(opened) == 1
    finally:
        await engine.dispose()
        await reader.dispose()


async def test_in_memory_databases_read_through_the_engine_itself() -> None:
    engine = create_engine("sqlite+aiosqlite:///:memory:")
    try:
        assert sqlite_reader(engine) is None
        async with read_connection(engine) as reads:
            assert (await reads.execute(text("SELECT 41 + 1"))).scalar_one() == 42
    finally:
        await engine.dispose()
