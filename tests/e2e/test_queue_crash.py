"""Crash the worker process for real (SIGKILL) and check the queue loses and doubles nothing.

The worker process (queue_worker_proc.py) streams each job's output from a local model peer,
checkpointing every token. We kill it mid-flight, and at every commit / model-call boundary, then
restart it; the final state must equal a run without a crash, with one result row per job.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from bot.db.engine import create_engine
from bot.db.models.queue import Job, JobCheckpoint
from bot.engine.queue import JobQueue, JobSpec
from tests.e2e.queue_worker_proc import (  # noqa: F401  (fixtures)
    JOB_KIND,
    RESULTS,
    queue_mariadb_shared,
    queue_sqlite_template,
    queue_url,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BOUNDARIES = [
    "claim.before_commit",
    "claim.after_commit",
    "checkpoint.before_commit",
    "checkpoint.after_commit",
    "model.before_call",
    "model.after_call",
    "step.before_commit",
    "step.after_commit",
    "complete.before_commit",
    "complete.after_commit",
]


def tokens_for(prompt: str, count: int) -> list[str]:
    return [f"{prompt}:w{index} " for index in range(count)]


@dataclass
class ModelPeer:
    """An OpenAI-compatible streaming chat endpoint that continues from an assistant prefix."""

    tokens: int
    delay_s: float
    requests: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body["messages"]
        prompt = messages[0]["content"]
        prefix = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
        words = tokens_for(prompt, self.tokens)
        done = 0
        while done < len(words) and prefix.startswith("".join(words[: done + 1])):
            done += 1
        if "".join(words[:done]) != prefix:
            self.errors.append(f"{prompt}: prefix {prefix!r} is not a prefix of the output")
        self.requests.append({"prompt": prompt, "resumed_tokens": done})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in words[done:]:
            await asyncio.sleep(self.delay_s)
            chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def peer_factory() -> AsyncIterator[Callable[[int, float], Awaitable[tuple[ModelPeer, str]]]]:
    servers: list[TestServer] = []

    async def start(tokens: int, delay_s: float) -> tuple[ModelPeer, str]:
        peer = ModelPeer(tokens=tokens, delay_s=delay_s)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", peer.completions)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return peer, str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def launch(
    url: str, peer: str, log: Path, *, concurrency: int, lease: float, kill: tuple[str, int] | None
) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ORCH_TEST_KILL_AT", None)
    if kill is not None:
        env["ORCH_TEST_KILL_AT"], env["ORCH_TEST_KILL_AFTER"] = kill[0], str(kill[1])
    handle = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e.queue_worker_proc", "run",
            "--url", url, "--peer", peer,
            "--concurrency", str(concurrency), "--lease", str(lease),
            cwd=REPO, env=env, stdout=handle, stderr=handle,
        )  # fmt: skip
    finally:
        handle.close()


async def wait_exit(process: asyncio.subprocess.Process, log: Path, *, timeout: float) -> int:
    try:
        return await asyncio.wait_for(process.wait(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"worker did not finish:\n{log.read_text()[-3000:]}") from None


async def enqueue_jobs(url: str, count: int) -> None:
    engine = create_engine(url)
    try:
        await JobQueue(engine).enqueue_many(
            [
                JobSpec(
                    kind=JOB_KIND,
                    idempotency_key=f"subtask:{index}:execute",
                    payload={"prompt": f"p{index}"},
                    priority=index % 3,
                )
                for index in range(count)
            ]
        )
    finally:
        await engine.dispose()


async def final_state(url: str) -> dict[str, Any]:
    """Everything a run leaves behind that must not depend on whether it crashed."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            jobs = (await connection.execute(select(Job.id, Job.idempotency_key, Job.status, Job.result))).all()
            rows = (await connection.execute(select(RESULTS.c.idempotency_key, RESULTS.c.text))).all()
            checkpoints = (
                await connection.execute(
                    select(JobCheckpoint.job_id, JobCheckpoint.key, JobCheckpoint.kind, JobCheckpoint.data)
                )
            ).all()
    finally:
        await engine.dispose()
    key_of = {job.id: job.idempotency_key for job in jobs}
    state: dict[str, Any] = {}
    for job in jobs:
        state[job.idempotency_key] = {
            "status": job.status,
            "result": job.result,
            "result_rows": sorted(text for key, text in rows if key == job.idempotency_key),
            "checkpoints": {},
        }
    for checkpoint in checkpoints:
        state[key_of[checkpoint.job_id]]["checkpoints"][checkpoint.key] = [checkpoint.kind, checkpoint.data]
    return state


def expected_state(count: int, tokens: int) -> dict[str, Any]:
    """What a run without a crash leaves (asserted by test_run_without_crash)."""
    state = {}
    for index in range(count):
        text = "".join(tokens_for(f"p{index}", tokens))
        state[f"subtask:{index}:execute"] = {
            "status": "succeeded",
            "result": {"text": text},
            "result_rows": [text],
            "checkpoints": {"out": ["partial", text], "generate": ["step", text]},
        }
    return state


async def count_rows(url: str) -> tuple[int, int]:
    """(running jobs, jobs with a partial-output checkpoint)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            running = (
                await connection.execute(select(func.count()).select_from(Job).where(Job.status == "running"))
            ).scalar_one()
            partial = (
                await connection.execute(
                    select(func.count()).select_from(JobCheckpoint).where(JobCheckpoint.key == "out")
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    return int(running), int(partial)


async def test_run_without_crash(queue_url: str, tmp_path: Path, peer_factory: Any) -> None:  # noqa: F811
    peer, peer_url = await peer_factory(5, 0.0)
    await enqueue_jobs(queue_url, 6)
    log = tmp_path / "worker.log"
    process = await launch(queue_url, peer_url, log, concurrency=3, lease=30, kill=None)
    assert await wait_exit(process, log, timeout=60) == 0, log.read_text()[-3000:]
    assert await final_state(queue_url) == expected_state(6, 5)
    assert len(peer.requests) == 6
    assert peer.errors == []


async def test_sigkill_with_20_in_flight_then_restart(
    queue_url: str,  # noqa: F811
    tmp_path: Path,
    peer_factory: Any,
) -> None:
    peer, peer_url = await peer_factory(10, 0.05)
    await enqueue_jobs(queue_url, 20)
    log = tmp_path / "worker.log"
    # A 30 s lease: the restart must not wait for expiry (it recovers its dead predecessor's jobs).
    process = await launch(queue_url, peer_url, log, concurrency=20, lease=30, kill=None)
    deadline = time.monotonic() + 60
    while True:
        running, partial = await count_rows(queue_url)
        if running == 20 and partial >= 10:
            break
        assert process.returncode is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"never saw 20 in flight: {running=} {partial=}"
        await asyncio.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert await process.wait() == -signal.SIGKILL
    at_kill = await final_state(queue_url)
    assert any(job["status"] == "running" for job in at_kill.values())
    resumable = {key for key, job in at_kill.items() if job["status"] == "running" and "out" in job["checkpoints"]}
    assert resumable

    started = time.monotonic()
    restart = await launch(queue_url, peer_url, log, concurrency=5, lease=30, kill=None)
    assert await wait_exit(restart, log, timeout=60) == 0, log.read_text()[-3000:]
    assert time.monotonic() - started < 25  # well under the 30 s lease

    assert await final_state(queue_url) == expected_state(20, 10)
    assert peer.errors == []
    resumed_prompts = {request["prompt"] for request in peer.requests if request["resumed_tokens"] > 0}
    assert {f"p{key.split(':')[1]}" for key in resumable} <= resumed_prompts


async def test_a_kill_at_every_boundary_ends_like_a_clean_run(
    queue_url: str,  # noqa: F811
    tmp_path: Path,
    peer_factory: Any,
) -> None:
    """Crash at each boundary in turn (seeded order and hit count), restarting after each."""
    rng = random.Random(20_260_101)
    plan = [(boundary, rng.randint(1, 2)) for boundary in rng.sample(BOUNDARIES, len(BOUNDARIES))]
    peer, peer_url = await peer_factory(3, 0.005)
    await enqueue_jobs(queue_url, 24)
    log = tmp_path / "worker.log"
    for boundary, kill_after in plan:
        crashing = await launch(queue_url, peer_url, log, concurrency=3, lease=30, kill=(boundary, kill_after))
        code = await wait_exit(crashing, log, timeout=90)
        assert code == -signal.SIGKILL, f"never reached {boundary} x{kill_after}:\n{log.read_text()[-3000:]}"

    restart = await launch(queue_url, peer_url, log, concurrency=3, lease=30, kill=None)
    assert await wait_exit(restart, log, timeout=90) == 0, log.read_text()[-3000:]
    assert await final_state(queue_url) == expected_state(24, 3)
    assert peer.errors == []
