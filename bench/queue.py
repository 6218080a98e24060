"""Durable queue throughput: raw claims/s and completes/s, and end-to-end subtasks/s per concurrency.

    python -m bench.queue [--jobs N] [--json]

Runs on a SQLite file (WAL with synchronous=NORMAL, the engine default: durable across process
crashes; and synchronous=FULL: durable across power loss) and on MariaDB when one answers on
127.0.0.1:3306. "Overhead" is the wall time per subtask with a handler that does nothing, at
concurrency 1: what the queue itself costs each subtask. The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

CONCURRENCY = (1, 16, 64)


@asynccontextmanager
async def _database(backend: str, workdir: Path) -> AsyncIterator[str]:
    if backend.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{workdir / f'{backend}-{uuid.uuid4().hex[:6]}.db'}"
        return
    import pymysql

    name = f"orch_bench_{uuid.uuid4().hex[:10]}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield f"mysql+aiomysql://root@127.0.0.1:3306/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


async def _create_schema(url: str) -> None:
    import bot.db.models  # noqa: F401  (fills Base.metadata)
    from bot.db.base import Base
    from bot.db.engine import create_engine

    tables = Base.metadata.tables
    needed: set[str] = set()
    todo = ["jobs", "job_checkpoints", "queue_workers"]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(fk.column.table.name for fk in tables[name].foreign_keys)
    subset = [table for table in Base.metadata.sorted_tables if table.name in needed]
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: Base.metadata.create_all(sync, tables=subset))
    finally:
        await engine.dispose()


def _engine(url: str, backend: str) -> Any:
    from sqlalchemy import event

    from bot.db.engine import create_engine, sqlite_writer

    engine = create_engine(url)
    if backend == "sqlite-full":

        def _full_sync(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        # The queue writes through its own in-loop connection (bot.db.engine.sqlite_writer).
        writer = sqlite_writer(engine)
        for target in (engine, *((writer.engine,) if writer else ())):
            event.listen(target.sync_engine, "connect", _full_sync)

    return engine


async def _raw_rates(queue: Any, jobs: int, batch: int) -> dict[str, float]:
    """Claims/s and completes/s calling the queue directly in batches of `batch`."""
    from bot.engine.queue import JobSpec

    await queue.enqueue_many([JobSpec(kind="bench.raw", idempotency_key=f"raw:{batch}:{n}") for n in range(jobs)])
    claim_time = complete_time = 0.0
    done = 0
    while done < jobs:
        started = time.perf_counter()
        claimed = await queue.claim("bench-raw", limit=batch, kinds=["bench.raw"])
        claim_time += time.perf_counter() - started
        if not claimed:
            break
        started = time.perf_counter()
        if batch == 1:
            await queue.complete(claimed[0].lease, {})
        else:
            await queue.complete_many([(job.lease, {}) for job in claimed])
        complete_time += time.perf_counter() - started
        done += len(claimed)
    return {
        "claims_per_s": round(done / claim_time, 1),
        "completes_per_s": round(done / complete_time, 1),
    }


async def _end_to_end(queue: Any, jobs: int, concurrency: int) -> dict[str, float]:
    """Subtasks/s through a Worker whose handler does nothing (pure queue cost)."""
    from bot.engine.queue import JobContext, JobSpec, QueueEvent, Worker

    kind = f"bench.e2e.{concurrency}"
    await queue.enqueue_many([JobSpec(kind=kind, idempotency_key=f"e2e:{concurrency}:{n}") for n in range(jobs)])
    finished = asyncio.Event()
    succeeded = 0

    def count(event: QueueEvent) -> None:
        nonlocal succeeded
        if event.name == "succeeded":
            succeeded += 1
            if succeeded == jobs:
                finished.set()

    async def handler(_ctx: JobContext) -> dict[str, Any]:
        return {}

    worker = Worker(
        queue=queue,
        handlers={kind: handler},
        concurrency=concurrency,
        on_event=count,
        poll_s=0.05,
        recover_local_dead_workers=False,
    )
    started = time.perf_counter()
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(finished.wait(), timeout=600)
    elapsed = time.perf_counter() - started
    await worker.stop()
    await runner
    return {
        "subtasks_per_s": round(jobs / elapsed, 1),
        "ms_per_subtask": round(1000 * elapsed / jobs, 3),
    }


async def _bench_backend(backend: str, jobs: int, workdir: Path) -> dict[str, Any]:
    from bot.engine.queue import JobQueue

    async with _database(backend, workdir) as url:
        await _create_schema(url)
        engine = _engine(url, backend)
        queue = JobQueue(engine)
        try:
            report: dict[str, Any] = {"raw": {}, "worker": {}}
            for batch in CONCURRENCY:
                report["raw"][f"batch_{batch}"] = await _raw_rates(queue, jobs, batch)
            for concurrency in CONCURRENCY:
                report["worker"][f"concurrency_{concurrency}"] = await _end_to_end(queue, jobs, concurrency)
            report["overhead_ms_per_subtask"] = report["worker"]["concurrency_1"]["ms_per_subtask"]
            return report
        finally:
            await engine.dispose()


def _mariadb_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 3306), timeout=1):
            return True
    except OSError:
        return False


async def run(jobs: int) -> dict[str, Any]:
    """Benchmark every reachable backend."""
    backends = ["sqlite", "sqlite-full"] + (["mariadb"] if _mariadb_reachable() else [])
    workdir = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    results: dict[str, Any] = {"jobs": jobs, "backends": {}}
    try:
        for backend in backends:
            results["backends"][backend] = await _bench_backend(backend, jobs, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "mariadb" not in backends:
        results["mariadb"] = "not reachable on 127.0.0.1:3306"
    return results


def main() -> None:
    """Run the benchmark and print a table (unless --json) and a JSON last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per measurement")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)
    results = asyncio.run(run(args.jobs))
    if not args.json:
        for backend, report in results["backends"].items():
            print(f"{backend}:")
            for name, rates in report["raw"].items():
                print(f"  raw {name:<16} {rates}")
            for name, rates in report["worker"].items():
                print(f"  worker {name:<13} {rates}")
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
