"""`orchestrator run` as a real process: starts, answers, exits cleanly on SIGTERM; `doctor --json`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.fakes import FakeLMStudio

ROOT = Path(__file__).resolve().parents[2]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_DATA_DIR=str(tmp_path / "data"), ORCH_ADMIN_API__PORT="0", ORCH_LOG__FORMAT="json",
               XDG_DATA_HOME=str(tmp_path / "xdg"))
    env.update(extra)
    return env


def read_json_lines(stream: IO[str], *, until: str, timeout: float) -> list[dict[str, object]]:
    """Log lines until one whose event is `until` (the daemon logs JSON when not on a terminal)."""
    lines: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = stream.readline()
        if not raw:
            break
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        lines.append(line)
        if line.get("event") == until:
            return lines
    raise AssertionError(f"no {until!r} log line; got {[line.get('event') for line in lines]}")


@pytest.mark.slow
async def test_run_starts_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with FakeLMStudio() as fake:
        fake.script("qwen2.5-7b-instruct", answer="hi")
        process = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=tmp_path, text=True,
                                   env=cli_env(tmp_path, ORCH_LMSTUDIO__BASE_URL=fake.url),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert process.stderr is not None
            # Read in a thread: the fake LM Studio serves the daemon from this test's event loop.
            lines = await asyncio.to_thread(read_json_lines, process.stderr, until="orchestrator ready",
                                            timeout=120)
            url = next(str(line["url"]) for line in lines if line.get("event") == "admin API listening")
            async with httpx.AsyncClient() as client:
                health = await client.get(f"{url}/healthz")
                assert health.status_code == 200
                unauthorised = await client.get(f"{url}/api/v1/tasks")
                assert unauthorised.status_code == 401
            # The engine synced the provider's models into the database on start.
            assert any(call.path in ("/api/v1/models", "/api/v0/models", "/v1/models") for call in fake.calls())
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 30) == 0
            assert time.monotonic() - started < 30
            rest = await asyncio.to_thread(process.stderr.read)
            assert "orchestrator stopped" in rest
            assert "Traceback" not in rest
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert (tmp_path / "data" / "orchestrator.db").exists()
    assert oct((tmp_path / "data" / "keyring.json").stat().st_mode & 0o777) == "0o600"


async def test_run_refuses_a_port_in_use_with_one_clear_message(tmp_path: Path) -> None:
    async with FakeLMStudio() as fake:
        fake.script("qwen2.5-7b-instruct", answer="hi")
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            env = cli_env(tmp_path, ORCH_ADMIN_API__PORT=str(port), ORCH_LMSTUDIO__BASE_URL=fake.url)
            result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot", "run"], cwd=tmp_path,
                                             env=env, text=True, capture_output=True, timeout=120)
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def doctor(tmp_path: Path, **env: str) -> tuple[int, dict[str, object]]:
    result = subprocess.run([sys.executable, "-m", "bot", "doctor", "--json"], cwd=tmp_path, text=True,
                            env=cli_env(tmp_path, **env), capture_output=True, timeout=120)
    return result.returncode, json.loads(result.stdout)


def checks(report: dict[str, object]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in report["checks"]}  # type: ignore[union-attr, index, misc]


def test_doctor_reports_a_broken_set_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "keyring.json").write_text("{}")
    (data / "keyring.json").chmod(0o644)
    code, report = doctor(tmp_path, ORCH_DATABASE_URL="mysql+aiomysql://root@127.0.0.1:1/none",
                          ORCH_LMSTUDIO__BASE_URL="http://127.0.0.1:9",
                          ORCH_SLACK__BOT_TOKEN="xoxb-not-valid", ORCH_SLACK__API_BASE_URL="http://127.0.0.1:9/api/")
    assert code == 1
    assert report["ok"] is False
    found = checks(report)
    assert found["database"]["status"] == "fail"
    assert "127.0.0.1:1" in found["database"]["detail"]
    assert found["keyring"]["status"] == "fail"
    assert "chmod 600" in found["keyring"]["fix"]
    assert found["llm:lmstudio"]["status"] == "warn"
    assert found["slack"]["status"] == "fail"
    assert "xoxb-not-valid" not in json.dumps(report)


def test_doctor_on_a_fresh_machine_says_what_to_do(tmp_path: Path) -> None:
    code, report = doctor(tmp_path, ORCH_LMSTUDIO__BASE_URL="http://127.0.0.1:9")
    found = checks(report)
    assert found["migrations"]["status"] == "fail"
    assert "orchestrator migrate" in (found["migrations"]["fix"] or "")
    assert not list(tmp_path.rglob("*.db"))  # looked for, not created
    assert found["keyring"]["status"] == "warn"
    assert found["chat"]["status"] == "ok"
    assert code == 1


def test_doctor_reports_a_bad_config(tmp_path: Path) -> None:
    code, report = doctor(tmp_path, ORCH_ADMIN_API__PORT="-5")
    assert code == 1
    assert checks(report)["config"]["status"] == "fail"
