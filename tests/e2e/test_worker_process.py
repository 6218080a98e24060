"""`orchestrator worker` and `[engine] worker_processes` as real processes.

A worker process claims a task another process submitted and its events reach the process that
follows the task; SIGTERM drains it; a daemon restarts a worker process that was SIGKILLed, not
one that was stopped.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from bot.db.models import QueueWorker
from tests.e2e.test_daemon import cli_env, read_json_lines
from tests.fakes import FakeLMStudio
from tests.integration.test_engine import PARIS, lmstudio, stop
from tests.integration.test_event_relay import collect_until_done, daemon, script_two_models

__all__ = ["lmstudio"]


@pytest.mark.slow
async def test_a_worker_process_runs_what_another_process_submitted(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    script_two_models(lmstudio)
    front = await daemon(migrated_db, lmstudio, tmp_path, "front", worker=False, relay="on")
    assert front.bus is not None and front.engine is not None
    env = cli_env(tmp_path, ORCH_DATABASE_URL=migrated_db, ORCH_LMSTUDIO__BASE_URL=lmstudio.url,
                  ORCH_ENGINE__DIVERGENCE_EMBEDDER="lexical", ORCH_LOG__LEVEL="INFO")
    process = subprocess.Popen([sys.executable, "-m", "bot", "worker", "--concurrency", "2"], cwd=tmp_path,
                               text=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched = front.bus.subscribe(topics={"task"}, maxsize=10_000)
    try:
        assert process.stderr is not None
        lines = await asyncio.to_thread(read_json_lines, process.stderr, until="orchestrator ready", timeout=120)
        ready = next(line for line in lines if line.get("event") == "orchestrator ready")
        assert ready["components"] == ["database", "engine"]
        submitted = await front.engine.submit(title="What is the capital of France?", single_step=True)
        events = await collect_until_done(watched, submitted.task_id, timeout=90)
        assert events[-1].kind == "task.done" and events[-1].payload["result"] == PARIS
        origins = {e.origin for e in events if e.kind != "task.created"}
        assert len(origins) == 1 and None not in origins  # run there, heard here
        assert "".join(str(e.payload["text"]) for e in events if e.kind == "subtask.token") == PARIS
        (worker_id,) = origins
        assert (await asyncio.to_thread(_listed, env))[worker_id]["state"] == "running"  # `orchestrator workers`
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
        rest = await asyncio.to_thread(process.stderr.read)
        assert "Traceback" not in rest
        assert worker_id not in await asyncio.to_thread(_listed, env)
        assert (await asyncio.to_thread(_listed, env, "--all"))[worker_id]["state"] == "stopped"
        async with front.sessions() as session:
            workers = (await session.scalars(select(QueueWorker))).all()
        (worker_row,) = [w for w in workers if w.id in origins]
        assert worker_row.concurrency == 2 and worker_row.stopped_at is not None
    finally:
        watched.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        await stop(front)


def _listed(env: dict[str, str], *args: str) -> dict[str, dict[str, object]]:
    result = subprocess.run([sys.executable, "-m", "bot", "workers", "--json", *args], env=env, text=True,
                            capture_output=True, timeout=60, check=True)
    return {str(row["id"]): row for row in json.loads(result.stdout)}


def _daemon_with_workers(tmp_path: Path, fake: FakeLMStudio, count: int, *, stderr: int) -> subprocess.Popen[str]:
    """`orchestrator run` with `count` worker processes, and only the engine besides."""
    env = cli_env(tmp_path, ORCH_LMSTUDIO__BASE_URL=fake.url, ORCH_ENGINE__WORKER_PROCESSES=str(count),
                  ORCH_ADMIN_API__ENABLED="false", ORCH_MONITOR__ENABLED="false")
    return subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=tmp_path, text=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr)


def _children(pid: int) -> list[psutil.Process]:
    """The daemon's live worker processes (one exiting while listed is left out)."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


async def _wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_the_daemon_restarts_a_killed_worker_process_and_stops_them_all(tmp_path: Path) -> None:
    async with FakeLMStudio() as fake:
        fake.script("qwen2.5-7b-instruct", answer="hi")
        process = _daemon_with_workers(tmp_path, fake, 2, stderr=subprocess.PIPE)
        try:
            assert process.stderr is not None
            # The children log to the daemon's stderr too: wait for the daemon's own "ready".
            while True:
                lines = await asyncio.to_thread(read_json_lines, process.stderr, until="orchestrator ready",
                                                timeout=120)
                if "workers" in str(lines[-1].get("components")):
                    break
            await _wait_for(lambda: len(_children(process.pid)) == 2, 60)
            victim = _children(process.pid)[0]
            victim.kill()
            await _wait_for(lambda: len(_children(process.pid)) == 2
                            and victim.pid not in [c.pid for c in _children(process.pid)], 60)
            # A clean exit is a stop someone asked for (systemd stops every process of the unit):
            # not restarted. The pick may be the replacement, still starting, so SIGTERM may kill it
            # before its handler is installed: that is a stop too.
            stopped = _children(process.pid)[0]
            stopped.terminate()
            await asyncio.to_thread(stopped.wait, 30)  # not our child: psutil cannot read its exit code
            await asyncio.sleep(3)
            children = _children(process.pid)
            assert len(children) == 1
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 60) == 0
            _gone, alive = psutil.wait_procs(children, timeout=10)
            assert not alive
            rest = await asyncio.to_thread(process.stderr.read)
            restarted = [json.loads(line) for line in rest.splitlines()
                         if line.startswith("{") and "worker process exited" in line]
            assert restarted and restarted[0]["exit_code"] == -signal.SIGKILL
            assert "worker process stopped; not restarting it" in rest
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_worker_refuses_a_database_the_daemon_has_not_migrated(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bot", "worker"], cwd=tmp_path, env=cli_env(tmp_path),
                            text=True, capture_output=True, timeout=120)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "orchestrator migrate" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.db"))  # refused without creating the file


@pytest.mark.slow
async def test_worker_processes_stop_when_their_daemon_is_killed(tmp_path: Path) -> None:
    async with FakeLMStudio() as fake:
        fake.script("qwen2.5-7b-instruct", answer="hi")
        process = _daemon_with_workers(tmp_path, fake, 1, stderr=subprocess.DEVNULL)
        try:
            await _wait_for(lambda: len(_children(process.pid)) == 1, 120)
            (child,) = _children(process.pid)
            # Started from the daemon's own components' start: wait until the child is running.
            await _wait_for(lambda: "parent" in " ".join(child.cmdline()), 30)
            await asyncio.sleep(3)
            process.kill()  # no chance to stop its children
            process.wait()
            _gone, alive = await asyncio.to_thread(psutil.wait_procs, [child], 30)
            assert not alive
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
