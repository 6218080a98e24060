"""A real worker process for the queue's crash and concurrency tests (run with the venv python).

`run`: a daemon-like Worker whose handler streams a completion from a local model peer,
checkpointing the partial output per token, then writes its result row through a commit hook.
`ORCH_TEST_KILL_AT=<boundary>` with `ORCH_TEST_KILL_AFTER=<n>` makes it SIGKILL itself the n-th
time it reaches that boundary, so tests crash it exactly at a commit or model-call edge.
`claim`: a bare claimer that claims in batches, records every claim to a file and completes them.
It prints "ready" and waits for a line on stdin before its first claim, so a test can start
several claimers at the same moment (a claimer that boots first can otherwise drain the queue).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

RESULTS = sa.Table(
    "crash_results",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("worker_id", sa.String(128), nullable=False),
)
JOB_KIND = "crash.generate"


def queue_tables() -> list[sa.Table]:
    """The queue's tables and those they reference (creating all models is slow on MariaDB)."""
    import bot.db.models  # noqa: F401  (fills Base.metadata)
    from bot.db.base import Base

    tables = Base.metadata.tables
    needed: set[str] = set()
    todo = ["jobs", "job_checkpoints", "queue_workers"]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(fk.column.table.name for fk in tables[name].foreign_keys)
    return [table for table in Base.metadata.sorted_tables if table.name in needed]


async def create_schema(url: str) -> None:
    """The queue's tables plus the test's own result table, on either backend."""
    from bot.db.engine import create_engine

    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            tables = queue_tables()
            await connection.run_sync(lambda sync: tables[0].metadata.create_all(sync, tables=tables))
            await connection.run_sync(RESULTS.metadata.create_all)
    finally:
        await engine.dispose()


async def reset_queue_tables(url: str) -> None:
    """Empty the queue's tables between tests sharing one schema."""
    from bot.db.engine import create_engine

    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for table in ("crash_results", "job_checkpoints", "jobs", "queue_workers"):
                await connection.execute(sa.text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def queue_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with the queue schema, copied per test (cheaper than creating it each time)."""
    path = tmp_path_factory.mktemp("queue-template") / "template.db"
    asyncio.run(create_schema(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def queue_mariadb_shared() -> Iterator[str]:
    """One MariaDB database with the queue schema for these tests, emptied before each test."""
    from tests.conftest import MARIADB_HOST, MARIADB_PORT, _admin_execute, require_mariadb

    require_mariadb()
    name = f"orch_queue_{uuid.uuid4().hex[:12]}"
    _admin_execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    url = f"mysql+aiomysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    try:
        asyncio.run(create_schema(url))
        yield url
    finally:
        _admin_execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with the queue schema and no jobs, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "queue.db"
        shutil.copyfile(request.getfixturevalue("queue_sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("queue_mariadb_shared")
    asyncio.run(reset_queue_tables(url))
    return url


class Killer:
    """SIGKILLs this process the n-th time the named boundary is reached."""

    def __init__(self) -> None:
        self.boundary = os.environ.get("ORCH_TEST_KILL_AT", "")
        self.remaining = int(os.environ.get("ORCH_TEST_KILL_AFTER", "1"))

    def __call__(self, name: str, _job_id: int) -> None:
        if name != self.boundary:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


async def run_worker(args: argparse.Namespace) -> None:
    import aiohttp

    from bot.db.engine import create_engine
    from bot.engine.queue import JobContext, JobQueue, Worker

    killer = Killer()
    engine = create_engine(args.url)
    queue = JobQueue(engine, lease_s=args.lease, retry_base_s=0.2, boundary_hook=killer)
    http = aiohttp.ClientSession()

    async def generate(ctx: JobContext) -> dict[str, Any]:
        async def call_model() -> str:
            text: str = ctx.partial("out", "")
            messages = [{"role": "user", "content": ctx.payload["prompt"]}]
            if text:
                messages.append({"role": "assistant", "content": text})
            killer("model.before_call", ctx.job.id)
            body = {"model": "fake", "stream": True, "messages": messages}
            async with http.post(f"{args.peer}/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        break
                    delta = json.loads(data)["choices"][0]["delta"].get("content", "")
                    if delta:
                        text += delta
                        await ctx.checkpoint("out", text)
            killer("model.after_call", ctx.job.id)
            return text

        text = await ctx.step("generate", call_model)

        async def write_result(session: AsyncSession) -> None:
            await session.execute(
                RESULTS.insert().values(
                    job_id=ctx.job.id,
                    idempotency_key=ctx.job.idempotency_key,
                    text=text,
                    worker_id=ctx.job.worker_id,
                )
            )

        ctx.on_commit(write_result)
        return {"text": text}

    worker = Worker(
        queue=queue,
        handlers={JOB_KIND: generate},
        concurrency=args.concurrency,
        poll_s=0.05,
        heartbeat_s=min(0.5, args.lease / 3),
    )
    runner = asyncio.create_task(worker.run())
    try:
        while not runner.done():
            counts = await queue.counts()
            if counts.get("queued", 0) == 0 and counts.get("running", 0) == 0:
                break
            await asyncio.sleep(0.05)
        await worker.stop(drain_timeout_s=5)
        await runner
    finally:
        await http.close()
        await engine.dispose()


async def run_claimer(args: argparse.Namespace) -> None:
    from bot.db.engine import create_engine
    from bot.engine.queue import JobQueue

    engine = create_engine(args.url)
    queue = JobQueue(engine, lease_s=300)
    claimed_total = 0
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    with Path(args.out).open("w", encoding="utf-8") as record:
        try:
            while True:
                try:
                    jobs = await queue.claim(args.name, limit=args.batch)
                except OperationalError as err:  # SQLite busy past its timeout: try again
                    print(f"claim retry: {err.orig}", file=sys.stderr)
                    continue
                if not jobs:
                    # Nothing claimable right now is not "done": the other claimer may hold rows
                    # locked (SKIP LOCKED skips them). Stop only when no job is left to run.
                    counts = await queue.counts()
                    if not counts.get("queued") and not counts.get("running"):
                        break
                    await asyncio.sleep(0.01)
                    continue
                record.write("".join(f"{job.id} {job.fence}\n" for job in jobs))
                record.flush()
                outcomes = [(job.lease, {"by": args.name}) for job in jobs]
                for _attempt in range(20):
                    try:
                        done = await queue.complete_many(outcomes)
                        break
                    except OperationalError as err:
                        print(f"complete retry: {err.orig}", file=sys.stderr)
                else:
                    raise SystemExit("could not record completions")
                if len(done) != len(jobs):
                    raise SystemExit(f"{len(jobs) - len(done)} completions were refused")
                claimed_total += len(jobs)
                # A worker runs its jobs between two claims. Claiming again at once, a claimer
                # re-took SQLite's write lock within microseconds of its commit, and the other
                # process's retries (backing off from 1 ms) rarely found it free: one drained the queue.
                await asyncio.sleep(0.002)
        finally:
            await engine.dispose()
    print(json.dumps({"claimed": claimed_total}))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    run = sub.add_parser("run")
    run.add_argument("--url", required=True)
    run.add_argument("--peer", required=True)
    run.add_argument("--concurrency", type=int, default=5)
    run.add_argument("--lease", type=float, default=5.0)
    claim = sub.add_parser("claim")
    claim.add_argument("--url", required=True)
    claim.add_argument("--name", required=True)
    claim.add_argument("--out", required=True)
    claim.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run_worker(args) if args.mode == "run" else run_claimer(args))


if __name__ == "__main__":
    main()
