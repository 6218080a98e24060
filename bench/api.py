"""Admin API throughput: a paged list over 10,000 rows and a single-row GET, 64 connections.

    python -m bench.api [--json] [--duration 5] [--connections 64] [--rows 10000]

The API runs in this process exactly as in the daemon (start_admin_api on 127.0.0.1, real
middleware chain: request id, access log, metrics, problem boundary, auth, rate limit) over a
migrated SQLite database; the load generator is a separate process (`--generate`), so the two do
not share an event loop or a core. The token's rate limit is raised for the run (the default, 50/s,
would measure the limiter). With --json the last line is one JSON object:
list_rps, list_p50_ms, list_p99_ms, get_rps, get_p50_ms, get_p99_ms, and {list,get}_server_cpu_us
(CPU time of the API process per request, which stays meaningful when other work shares the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

GOAL_RPS = 2000
GOAL_P99_MS = 25.0


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the load generator: send, read one whole response, repeat.

    A protocol instead of an HTTP client library because the generator shares this 2-core machine
    with the API: aiohttp's client spent about as much CPU per request as the server, and a busy
    generator's own event-loop lag was counted in every latency. This reads the status line and
    `Content-Length` (the admin API sends both on every response) and nothing else.
    """

    def __init__(self, request: bytes, on_response: Any) -> None:
        self._request = request
        self._on_response = on_response
        self._buffer = bytearray()
        self._needed: int | None = None
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.status = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self) -> None:
        assert self.transport is not None
        self._buffer.clear()
        self._needed = None
        self.sent = time.perf_counter()
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._needed is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            self.status = int(head[9:12])
            start = head.find(b"\r\ncontent-length:")
            if start < 0:
                raise RuntimeError("the API answered without Content-Length")
            stop = head.find(b"\r\n", start + 2)
            self._needed = end + 4 + int(head[start + 17:stop if stop > 0 else None])
        if len(self._buffer) >= self._needed:
            self._on_response(self)


async def _generate(base_url: str, token: str, path: str, *, connections: int, duration_s: float,
                    warmup_s: float) -> dict[str, Any]:
    """Keep `connections` requests in flight for `duration_s`; latencies after the warm-up count."""
    target = urlsplit(base_url)
    request = (f"GET {path} HTTP/1.1\r\nHost: {target.netloc}\r\nAuthorization: Bearer {token}\r\n"
               "Accept: application/json\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    measure_from = started + warmup_s
    stop_at = measure_from + duration_s

    def on_response(connection: _Connection) -> None:
        nonlocal errors
        done = time.perf_counter()
        if connection.sent >= measure_from:
            if connection.status == 200:
                latencies.append(done - connection.sent)
            else:
                errors += 1
        if done >= stop_at:
            assert connection.transport is not None
            connection.transport.close()
        else:
            connection.send()

    opened: list[_Connection] = []
    for _ in range(connections):
        _, connection = await loop.create_connection(lambda: _Connection(request, on_response),
                                                     target.hostname or "127.0.0.1", target.port or 80)
        opened.append(connection)
    for connection in opened:
        connection.send()
    await asyncio.gather(*(connection.closed for connection in opened))
    latencies.sort()
    count = len(latencies)
    return {
        "requests": count,
        "errors": errors,
        "rps": round(count / duration_s, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if count else None,
        "p99_ms": round(latencies[min(count - 1, int(count * 0.99))] * 1000, 2) if count else None,
        "generator_cpu_us": round(time.process_time() * 1e6 / max(1, count + errors)),
    }


async def _seed(url: str, rows: int) -> tuple[int, str]:
    from sqlalchemy import insert, select

    from admin_api.auth import mint_token
    from bot.db.base import utcnow
    from bot.db.engine import create_engine, session_factory
    from bot.db.migrate import upgrade_to_head
    from bot.db.models import ExecutionLog, LogLevel, User, UserRole

    await upgrade_to_head(url, backup_dir=None)
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            now = utcnow()
            batch = [{"level": LogLevel.INFO, "event": "model.call", "prompt": f"prompt {i}",
                      "response": f"answer {i}", "latency_ms": i % 900, "details": {"i": i}, "created_at": now}
                     for i in range(rows)]
            for start in range(0, rows, 2000):
                await session.execute(insert(ExecutionLog), batch[start:start + 2000])
            admin = (await session.execute(select(User).where(User.role == UserRole.ADMIN).limit(1))).scalar_one()
            minted = await mint_token(session, user_id=admin.id, name="bench", scopes=["read"])
            middle = (await session.execute(select(ExecutionLog.id).order_by(ExecutionLog.id)
                                            .offset(rows // 2).limit(1))).scalar_one()
            await session.commit()
            return int(middle), minted.secret
    finally:
        await engine.dispose()


def _served(handle: Any) -> int:
    """Requests the API has answered so far (from its own request counter)."""
    from admin_api.state import METRICS

    total = 0.0
    for metric in handle.app[METRICS].requests.collect():
        total += sum(sample.value for sample in metric.samples if sample.name.endswith("_total"))
    return int(total)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from admin_api import ApiOptions, start_admin_api
    from bot.aio import freeze_startup_heap
    from bot.db.engine import create_engine, session_factory
    from bot.events import EventBus
    from bot.logs import configure_logging
    from bot.settings import Settings

    configure_logging(level="WARNING", fmt="json")
    with tempfile.TemporaryDirectory(prefix="bench-api-") as scratch:
        data_dir = Path(scratch)
        url = f"sqlite+aiosqlite:///{data_dir / 'orchestrator.db'}"
        row_id, token = await _seed(url, args.rows)
        engine = create_engine(url)
        settings = Settings(data_dir=data_dir, admin_api={"host": "127.0.0.1", "port": 0})
        handle = await start_admin_api(
            settings=settings, session_factory=session_factory(engine), bus=EventBus(),
            options=ApiOptions(rate_per_second=1e9, burst=10**9),
        )
        freeze_startup_heap()  # as the daemon does once it is ready
        results: dict[str, Any] = {"rows": args.rows, "connections": args.connections, "duration_s": args.duration}
        try:
            for name, path in (("list", "/execution-logs?limit=50"), ("get", f"/execution-logs/{row_id}")):
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.api", "--generate", handle.base_url, token, path,
                    "--connections", str(args.connections), "--duration", str(args.duration),
                    stdout=asyncio.subprocess.PIPE,
                )
                cpu_before = time.process_time()
                served_before = _served(handle)
                output, _ = await process.communicate()
                cpu_used = time.process_time() - cpu_before
                served = _served(handle) - served_before
                measured = json.loads(output.decode().strip().splitlines()[-1])
                results.update({f"{name}_rps": measured["rps"], f"{name}_p50_ms": measured["p50_ms"],
                                f"{name}_p99_ms": measured["p99_ms"], f"{name}_errors": measured["errors"],
                                f"{name}_generator_cpu_us": measured["generator_cpu_us"],
                                # CPU the API process spent per request (warm-up included): unlike req/s,
                                # this barely moves when other processes compete for the cores.
                                f"{name}_server_cpu_us": round(cpu_used / served * 1e6) if served else None})
        finally:
            await handle.stop()
            await engine.dispose()
    results["goal"] = {"rps": GOAL_RPS, "p99_ms": GOAL_P99_MS}
    results["meets_goal"] = all(
        results[f"{n}_rps"] >= GOAL_RPS and (results[f"{n}_p99_ms"] or 1e9) <= GOAL_P99_MS for n in ("list", "get"))
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with --generate, be the load generator process)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line at the end")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per scenario")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--generate", nargs=3, metavar=("BASE_URL", "TOKEN", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        base_url, token, path = args.generate
        measured = asyncio.run(_generate(base_url, token, path, connections=args.connections,
                                         duration_s=args.duration, warmup_s=1.0))
        print(json.dumps(measured))
        return
    logging.getLogger().setLevel(logging.WARNING)
    results = asyncio.run(_run(args))
    if not args.json:
        for name in ("list", "get"):
            print(f"{name:>5}: {results[f'{name}_rps']:>8} req/s  p50 {results[f'{name}_p50_ms']} ms  "
                  f"p99 {results[f'{name}_p99_ms']} ms  errors {results[f'{name}_errors']}  "
                  f"server CPU {results[f'{name}_server_cpu_us']} µs/request")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
