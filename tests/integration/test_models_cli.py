"""`orchestrator models …` and `orchestrator providers …` as real subprocesses against local peers.

The database is migrated once per module (a copy per test); the seeded LM Studio row is pointed at
a fake LM Studio, so it is the provider the commands use; a second, token-protected fake is added
with `providers add`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db.engine import create_engine, session_factory
from bot.db.migrate import upgrade_to_head
from bot.db.models import AiModel, AiProvider, Credential
from bot.settings import load_settings
from tests.fakes.hub import FakeHub
from tests.fakes.lmstudio import DownloadScript, FakeLMStudio

TOKEN = "lms-secret-token-123"


class Cli:
    """Runs `python -m bot …` with the test's settings in the environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def __call__(self, *args: str, extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            env={**self.env, **(extra_env or {})},
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 90)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def peers() -> AsyncIterator[tuple[FakeLMStudio, FakeLMStudio, FakeHub]]:
    async with FakeLMStudio() as seeded, FakeLMStudio(api_token=TOKEN) as guarded, FakeHub() as hub:
        seeded.script("qwen2.5-coder-7b-instruct", params="7B", size_bytes=150_000_000)
        seeded.script("smol-135m", size_bytes=100_000_000, loaded=False)
        seeded.script("huge-405b", params="405B", size_bytes=3 * 1024**5, loaded=False)
        seeded.downloadable["acme/new-model"] = DownloadScript(total_bytes=4000, steps=4)
        guarded.script("llama-3.2-3b-instruct", params="3B")
        yield seeded, guarded, hub


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated and seeded SQLite database; each test works on its own copy."""
    path = tmp_path_factory.mktemp("template") / "orchestrator.db"
    settings = load_settings(environ={"ORCH_DATA_DIR": str(path.parent)})
    asyncio.run(upgrade_to_head(f"sqlite+aiosqlite:///{path}", backup_dir=None, settings=settings))
    return path


@pytest.fixture
async def cli(
    tmp_path: Path, sqlite_url: str, template_db: Path, peers: tuple[FakeLMStudio, FakeLMStudio, FakeHub]
) -> Cli:
    seeded, _, hub = peers
    database = Path(sqlite_url.removeprefix("sqlite+aiosqlite:///"))
    shutil.copyfile(template_db, database)
    with sqlite3.connect(database) as connection:  # the seeded LM Studio row, pointed at the fake
        connection.execute("UPDATE ai_providers SET base_url = ? WHERE name = 'LM Studio'", (seeded.url,))
    settings_env = {"ORCH_DATABASE_URL": sqlite_url, "ORCH_DATA_DIR": str(tmp_path / "data")}
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("ORCH_", "HF_"))}
    env.update(settings_env, HF_ENDPOINT=hub.url, ORCH_LOG__LEVEL="WARNING")
    return Cli(env)


async def test_providers_add_list_and_test(
    cli: Cli, peers: tuple[FakeLMStudio, FakeLMStudio, FakeHub], sqlite_url: str
) -> None:
    _, guarded, _ = peers
    code, out, err = await cli("providers", "list", "--json")
    assert code == 0, err
    [seeded_row] = json.loads(out)
    assert seeded_row["name"] == "LM Studio"
    assert seeded_row["has_token"] is False

    code, out, err = await cli(
        "providers", "add", "guarded", "--kind", "lmstudio", "--base-url", guarded.url,
        "--api-token-env", "GUARDED_TOKEN", "--priority", "5",
        extra_env={"GUARDED_TOKEN": TOKEN},
    )  # fmt: skip
    assert code == 0, err
    assert "token stored encrypted" in out
    assert TOKEN not in out + err

    code, out, err = await cli("providers", "test", "guarded")
    assert code == 0, err
    assert "guarded: ok" in out
    assert "1 models" in out
    assert guarded.calls()[-1].headers["Authorization"] == f"Bearer {TOKEN}"

    engine = create_engine(sqlite_url)
    async with session_factory(engine)() as session:
        row = await session.scalar(select(AiProvider).where(AiProvider.name == "guarded"))
        assert row is not None
        credential = await session.get(Credential, row.credential_id)
    await engine.dispose()
    assert credential is not None
    assert TOKEN.encode() not in credential.secret_blob
    assert str(row.health_status) == "healthy"

    code, out, err = await cli("providers", "list")
    assert code == 0
    assert "guarded  lmstudio" in out
    assert "token" in out
    assert TOKEN not in out


async def test_providers_add_refuses_bad_input(cli: Cli) -> None:
    code, _, err = await cli("providers", "add", "x", "--kind", "lmstudio", "--base-url", "ftp://nope")
    assert code == 2
    assert "http:// or https://" in err
    code, _, err = await cli("providers", "add", "LM Studio", "--kind", "ollama", "--base-url", "http://127.0.0.1:9")
    assert code == 2
    assert "exists already" in err
    code, _, err = await cli("providers", "add", "y", "--kind", "ollama", "--base-url", "http://127.0.0.1:9",
                             "--api-token-env", "UNSET_VARIABLE_X")  # fmt: skip
    assert code == 2
    assert "UNSET_VARIABLE_X is not set" in err
    code, _, err = await cli("providers", "test", "nobody")
    assert code == 2
    assert "no provider named 'nobody'" in err


async def test_models_list_load_unload(
    cli: Cli, peers: tuple[FakeLMStudio, FakeLMStudio, FakeHub], sqlite_url: str
) -> None:
    seeded, _, _ = peers
    code, out, err = await cli("models", "list", "--json")
    assert code == 0, err
    listed = {item["model"]: item for item in json.loads(out)}
    assert set(listed) == {"qwen2.5-coder-7b-instruct", "smol-135m", "huge-405b"}
    assert listed["smol-135m"]["loaded"] is False

    code, out, err = await cli("models", "load", "smol-135m", "--context-length", "8192")
    assert code == 0, err
    assert "loaded smol-135m on LM Studio" in out
    assert "KV cache" in out
    assert seeded.calls("/api/v1/models/load")[-1].body["context_length"] == 8192

    code, out, err = await cli("models", "list")
    assert code == 0, err
    assert any(line.startswith("LM Studio  smol-135m") and " yes " in line for line in out.splitlines())

    code, out, err = await cli("models", "unload", "smol-135m")
    assert code == 0, err
    assert seeded.loaded_instance_ids("smol-135m") == []

    engine = create_engine(sqlite_url)
    async with session_factory(engine)() as session:
        smol = await session.scalar(select(AiModel).where(AiModel.model_key == "smol-135m"))
    await engine.dispose()
    assert smol is not None
    assert smol.is_loaded is False


async def test_a_model_that_does_not_fit_is_refused(
    cli: Cli, peers: tuple[FakeLMStudio, FakeLMStudio, FakeHub]
) -> None:
    seeded, _, _ = peers
    code, _, err = await cli("models", "load", "huge-405b")
    assert code == 2
    assert "huge-405b needs about" in err
    assert "fix:" in err
    assert seeded.calls("/api/v1/models/load") == []
    code, _, err = await cli("models", "load", "no-such-model")
    assert code == 2
    assert "no configured server offers 'no-such-model'" in err


async def test_download_through_the_server_shows_progress(
    cli: Cli, peers: tuple[FakeLMStudio, FakeLMStudio, FakeHub]
) -> None:
    seeded, _, _ = peers
    code, out, err = await cli("models", "download", "acme/new-model", "--provider", "LM Studio")
    assert code == 0, err
    assert "downloaded acme/new-model on LM Studio" in out
    assert "100%" in err
    assert seeded.calls("/api/v1/models/download")[0].body["model"] == "acme/new-model"


async def test_download_from_the_hub_verifies_and_refuses_corruption(
    cli: Cli, peers: tuple[FakeLMStudio, FakeLMStudio, FakeHub], tmp_path: Path
) -> None:
    _, _, hub = peers
    content = os.urandom(200_000)
    hub.add_file("acme/tiny", "tiny.Q4_K_M.gguf", content)
    hub.add_file("acme/tiny", "twin.Q4_K_M.gguf", content, served=content[::-1])
    code, out, err = await cli("models", "download", "--hub", "acme/tiny", "tiny.Q4_K_M.gguf")
    assert code == 0, err
    saved = tmp_path / "data" / "models" / "acme" / "tiny" / "tiny.Q4_K_M.gguf"
    assert saved.read_bytes() == content
    assert "sha256 verified" in out
    assert "completed" in err

    dest = tmp_path / "twin.gguf"
    code, out, err = await cli("models", "download", "--hub", "acme/tiny", "twin.Q4_K_M.gguf", "--dest", str(dest))
    assert code == 2
    assert "the partial file was deleted" in err
    assert not dest.exists()
    assert not dest.with_name("twin.gguf.part").exists()

    code, _, err = await cli("models", "download", "--hub", "../etc", "passwd")
    assert code == 2
    assert "not a Hugging Face repository id" in err


async def test_recommend_explains_its_choice(cli: Cli) -> None:
    code, out, err = await cli("models", "recommend", "code")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("1. qwen2.5-coder-7b-instruct on LM Studio: code model by name")
    assert "huge-405b on LM Studio: too big for this machine" in out
    code, _, err = await cli("models", "recommend", "juggling")
    assert code == 2
    assert "unknown task type" in err
