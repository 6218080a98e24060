"""Engine throughput: subtasks/s through execute → validate (→ tie-break) with full durability.

    python -m bench.engine [--subtasks N] [--repeat 3] [--peer process|inline] [--json]

Each subtask is a single-step task (`/ask`-style: no planner), executed by one model and checked
by another on a zero-latency local LM Studio peer (tests/fakes), so what is measured is the
engine: selection, streaming with checkpoints, the reference answer, the verdict, divergence, the
hallucination check, quality metrics, execution logs, the durable queue and the event bus (with
the relay through the database where `[engine] relay_events` turns it on). One in ten answers
disagree, so a third model breaks the tie twice.

The peer runs in its own process by default, as a real LM Studio does: on one event loop with the
engine it cost the engine about a tenth of its loop (`--peer inline` measures that way).
"overhead_ms_per_subtask" is the wall time per subtask at concurrency 1 minus the time during
which at least one model call was in flight (the router's own timing of each call; the reference
answer and the verdict are asked at once, so their overlap counts once); "cpu_ms_per_subtask" is
the engine processes' CPU time per subtask at each concurrency (the engine's own work: with the
peer in its own process nothing else runs there). `--processes N` runs N-1 `orchestrator worker`
processes beside this one, as `[engine] worker_processes` does, the concurrency split between
them (not at concurrency 1).
Runs on SQLite (WAL, synchronous=NORMAL: every committed step survives SIGKILL, see docs/queue.md)
and, when one answers on 127.0.0.1:3306, MariaDB. The last line is JSON: each number is the median
of `--repeat` runs (fresh database and peer each), and "runs" keeps every run's value.
`BENCH_LOG=WARNING` shows the engine's warnings (retried claims, failed jobs) on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

CONCURRENCY = (1, 16, 64)
_REPO = str(Path(__file__).resolve().parent.parent)
AGREE = "The capital of France is Paris."
DISAGREE = "The capital of France is Lyon."
_ASKED = re.compile(r"#(\d+)")


def _mariadb_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 3306), timeout=1):
            return True
    except OSError:
        return False


def _script_peer(fake: Any) -> None:
    """Three models; alpha answers wrongly one time in ten, so a third model breaks that tie.

    Every answer names the question it answers, and the executor and the reference word it
    differently, so no two answers in a run are the same text (as with real models): work that is
    done once per text (embedding one) cannot look cheaper here than it is.
    """
    structured = {"Verdict": json.dumps({"score": 90, "verdict": "approve", "issues": [], "summary": ""}),
                  "Judgement": json.dumps({"winner": "alternative", "score": 90, "verdict": "approve",
                                           "reasons": ["r"], "merged_result": None})}
    counter = {"n": 0}

    def asked(body: dict[str, Any]) -> str:
        found = _ASKED.findall(str((body.get("messages") or [{}])[-1].get("content", "")))
        return found[0] if found else "?"

    def answer_with(free_text: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
        """A verdict or judgement when the request asks for one by schema, else `free_text`."""
        def respond(body: dict[str, Any]) -> str:
            title = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema", {}).get("title")
            return structured[title] if title in structured else free_text(body)
        return respond

    def executor(body: dict[str, Any]) -> str:
        counter["n"] += 1
        return f"{DISAGREE if counter['n'] % 10 == 0 else AGREE} (Question #{asked(body)}.)"

    def reviewer(body: dict[str, Any]) -> str:
        return f"{AGREE[:-1]}, as asked in question #{asked(body)}."

    fake.script("alpha-7b", family="qwen", responder=answer_with(executor))
    fake.script("beta-3b", family="llama", responder=answer_with(reviewer))
    fake.script("gamma-9b", family="gemma", responder=answer_with(reviewer))


async def _serve_peer() -> None:
    """The peer process: serve the scripted models, print the URL, stop when stdin closes."""
    from tests.fakes import FakeLMStudio

    async with FakeLMStudio() as fake:
        _script_peer(fake)
        print(fake.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


@asynccontextmanager
async def _peer(mode: str) -> AsyncIterator[str]:
    """The LM Studio peer's URL: a process of its own (default), or served from this event loop."""
    if mode == "inline":
        from tests.fakes import FakeLMStudio

        async with FakeLMStudio() as fake:
            _script_peer(fake)
            yield fake.url
        return
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.engine", "--serve-peer", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, cwd=_REPO)
    assert process.stdin is not None and process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if not line:
            raise RuntimeError("the peer process exited before serving")
        yield line.decode().strip()
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _worker_processes(count: int, *, url: str, workdir: Path, peer_url: str,
                            concurrency: int) -> list[asyncio.subprocess.Process]:
    """`count` `orchestrator worker` processes on the bench's database, as `[engine] worker_processes` starts them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_DATA_DIR=str(workdir / "data"), ORCH_DATABASE_URL=url, ORCH_LMSTUDIO__BASE_URL=peer_url,
               ORCH_ENGINE__MAX_CONCURRENCY=str(concurrency), ORCH_ENGINE__DIVERGENCE_EMBEDDER="lexical",
               ORCH_LOG__LEVEL=os.environ.get("BENCH_LOG", "ERROR"), ORCH_LOG__FORMAT="json",
               ORCH_MONITOR__ENABLED="false")
    return [await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "worker", cwd=_REPO, env=env,
                                                 stdin=asyncio.subprocess.DEVNULL)
            for _ in range(count)]


def _cpu_s(processes: list[asyncio.subprocess.Process]) -> float:
    import psutil

    total = 0.0
    for process in processes:
        times = psutil.Process(process.pid).cpu_times()
        total += times.user + times.system
    return total


def _covered_s(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of `intervals` (overlaps counted once)."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


async def _run(url: str, workdir: Path, *, subtasks: int, concurrency: int, peer: str = "process",
               processes: int = 1) -> dict[str, float]:
    from sqlalchemy import func, select, update

    from bot.aio import freeze_startup_heap
    from bot.db.engine import create_engine, read_connection, session_factory
    from bot.db.migrate import upgrade_to_head
    from bot.db.models import AiProvider, QueueWorker, Task
    from bot.engine.embeddings import LexicalEmbedder
    from bot.engine.runtime import EngineRuntime
    from bot.events import EventBus
    from bot.logs import configure_logging
    from bot.settings import load_settings

    configure_logging(level=os.environ.get("BENCH_LOG", "ERROR"), fmt="json")
    async with _peer(peer) as peer_url:
        await upgrade_to_head(url, backup_dir=None)
        # The concurrency is split between the processes: 64 over two processes is 32 each.
        share = max(1, concurrency // processes)
        settings = load_settings(environ={"ORCH_DATA_DIR": str(workdir / "data"), "ORCH_DATABASE_URL": url,
                                          "ORCH_LMSTUDIO__BASE_URL": peer_url},
                                 engine={"max_concurrency": share, "worker_processes": processes - 1})
        db = create_engine(url, settings=settings.database)
        sessions = session_factory(db)
        async with sessions() as session, session.begin():
            # The peer serves any number of requests at once, as a server with that many parallel
            # slots would (the seeded LM Studio row says 2, a typical desktop setting).
            await session.execute(update(AiProvider).values(base_url=peer_url, max_concurrency=256))
        # An event bus as in the daemon: every event is published, and relayed through the
        # database where `[engine] relay_events` says so (auto: on MariaDB).
        runtime = EngineRuntime(settings=settings, db_engine=db, sessions=sessions, embedder=LexicalEmbedder(),
                                worker_id=f"bench-{uuid.uuid4().hex[:6]}", bus=EventBus())
        await runtime.start()
        assert runtime.worker is not None and runtime.router is not None
        settled = asyncio.Event()
        engine_hook = runtime.worker.on_event
        queue_worker = runtime.worker

        def on_event(event: Any) -> None:
            if engine_hook is not None:
                engine_hook(event)
            if event.name == "dead" or (event.name == "succeeded" and queue_worker.completed >= subtasks):
                settled.set()

        queue_worker.on_event = on_event
        # Time inside model calls, from the router's own record of each call: execution_logs
        # keeps whole milliseconds (a 0.9 ms call is logged as 0), which on this zero-latency peer
        # moved about 2 ms of model time per subtask into "overhead". Calls of one subtask can
        # overlap (the reference and the verdict go out together), so what counts is the time
        # during which at least one call was in flight, not the sum of the calls' times.
        calls: list[tuple[float, float]] = []
        router = runtime.router
        usage_hook = router.on_call

        async def timed(record: Any) -> None:
            ended = time.monotonic()  # the router's clock; the record was made just now
            calls.append((ended - record.latency_ms / 1000, ended))
            if usage_hook is not None:
                await usage_hook(record)

        router.on_call = timed
        freeze_startup_heap()  # as the daemon does once it is ready
        workers: list[asyncio.subprocess.Process] = []
        try:
            assert runtime.engine is not None and runtime.worker is not None
            workers = await _worker_processes(processes - 1, url=url, workdir=workdir, peer_url=peer_url,
                                              concurrency=share)
            while workers:  # every worker process has registered: it is claiming
                async with sessions() as session:
                    registered = await session.scalar(select(func.count()).select_from(QueueWorker))
                if (registered or 0) >= processes:
                    break
                if any(w.returncode is not None for w in workers):
                    raise RuntimeError("a worker process exited before it started claiming")
                await asyncio.sleep(0.1)
            workers_cpu = _cpu_s(workers)
            started, cpu_started = time.perf_counter(), time.process_time()
            for index in range(subtasks):
                await runtime.engine.submit(title=f"What is the capital of France? #{index}", single_step=True)
            runtime.worker.wake()
            # The database says when every task has ended; it is asked when this worker has
            # finished enough jobs or a job died (a task can also end by failing), and at least
            # every half second. The harness sleeps on the worker's own events in between: polling
            # every 2 ms cost the engine's loop ~500 wake-ups a second, counted as engine overhead
            # at concurrency 1. Other processes' jobs are not seen here, so with several it asks
            # every 20 ms.
            ended = select(func.count()).select_from(Task).where(Task.status.in_(["completed", "failed"]))
            while True:
                if workers:
                    await asyncio.sleep(0.02)
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await settled.wait()
                    settled.clear()
                async with read_connection(db) as connection:
                    done = (await connection.execute(ended)).scalar()
                if (done or 0) >= subtasks:
                    break
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started + _cpu_s(workers) - workers_cpu
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.terminate()
            for worker in workers:
                await worker.wait()
            await runtime.stop()
            await db.dispose()
    return {"subtasks_per_s": subtasks / elapsed, "wall_ms_per_subtask": elapsed * 1000 / subtasks,
            "model_ms_per_subtask": _covered_s(calls) * 1000 / subtasks, "cpu_ms_per_subtask": cpu * 1000 / subtasks}


async def _once(name: str, *, subtasks: int, concurrency: int, peer: str, processes: int) -> dict[str, float]:
    """One measured run on a fresh database (and, on MariaDB, a database of its own)."""
    import pymysql

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        database = None
        if name == "sqlite":
            url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        else:
            database = f"orch_bench_{uuid.uuid4().hex[:10]}"
            admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
            with admin.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
            admin.close()
            url = f"mysql+aiomysql://root@127.0.0.1:3306/{database}"
        try:
            return await _run(url, workdir, subtasks=subtasks, concurrency=concurrency, peer=peer,
                              processes=processes)
        finally:
            if database is not None:
                admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
                with admin.cursor() as cursor:
                    cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
                admin.close()


async def _backend(name: str, *, subtasks: int, peer: str, processes: int = 1, repeat: int = 1) -> dict[str, Any]:
    """Each concurrency `repeat` times; the headline numbers are the medians, every run is kept.

    A run at concurrency 64 lasts about a second, and this kind of shared VM changes speed by
    more than a third within minutes, so one run per concurrency can land anywhere in that range.
    """
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    overheads: list[float] = []
    for concurrency in CONCURRENCY:
        count = subtasks if concurrency > 1 else max(20, subtasks // 10)
        for _ in range(repeat):
            result = await _once(name, subtasks=count, concurrency=concurrency, peer=peer,
                                 processes=processes if concurrency >= processes else 1)
            rates.setdefault(str(concurrency), []).append(round(result["subtasks_per_s"], 1))
            cpu.setdefault(str(concurrency), []).append(round(result["cpu_ms_per_subtask"], 2))
            if concurrency == 1:
                overheads.append(round(result["wall_ms_per_subtask"] - result["model_ms_per_subtask"], 2))
            print(f"{name} concurrency {concurrency}: {result['subtasks_per_s']:.1f} subtasks/s", file=sys.stderr)
    return {"subtasks_per_s": {c: statistics.median(r) for c, r in rates.items()},
            "overhead_ms_per_subtask": statistics.median(overheads),
            "cpu_ms_per_subtask": {c: statistics.median(r) for c, r in cpu.items()},
            "runs": {"subtasks_per_s": rates, "overhead_ms_per_subtask": overheads, "cpu_ms_per_subtask": cpu},
            "peer": peer, "processes": processes}


def main() -> None:
    """Print per-backend throughput; the last line is the JSON the README quotes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subtasks", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="Print only the JSON line on stdout.")
    parser.add_argument("--peer", choices=("process", "inline"), default="process",
                        help="Serve the fake LM Studio from its own process (default) or from the engine's loop.")
    parser.add_argument("--processes", type=int, default=1,
                        help="Engine processes sharing the concurrency: this one plus `orchestrator worker`s.")
    parser.add_argument("--repeat", type=int, default=3,
                        help="Runs per concurrency; the JSON's headline numbers are their medians.")
    parser.add_argument("--serve-peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_peer:
        asyncio.run(_serve_peer())
        return
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    report: dict[str, Any] = {"sqlite": asyncio.run(_backend("sqlite", subtasks=args.subtasks, peer=args.peer,
                                                             processes=args.processes, repeat=args.repeat))}
    if _mariadb_up():
        report["mariadb"] = asyncio.run(_backend("mariadb", subtasks=args.subtasks, peer=args.peer,
                                                 processes=args.processes, repeat=args.repeat))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
