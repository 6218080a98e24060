"""The console platform: the product without any token, and `orchestrator chat` end to end."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.platforms.console import ConsolePlatform
from bot.platforms.streaming import StreamRenderer
from tests.fakes.chat_db import ChatCore, chat_core, fresh_sqlite_copy, migrated_sqlite_template

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite_template(str(tmp_path_factory.mktemp("chat-template")))


@pytest.fixture
async def core(sqlite_template: str, tmp_path: Path) -> AsyncIterator[ChatCore]:
    async with chat_core(fresh_sqlite_copy(sqlite_template, str(tmp_path))) as built:
        yield built


async def test_repl_reads_lines_and_prints_replies(core: ChatCore, tmp_path: Path) -> None:
    output = io.StringIO()
    console = ConsolePlatform(
        sink=core.dispatcher.handle_event, user_id="alice", output=output, files_dir=tmp_path / "files"
    )
    await console.start()
    try:
        await console.repl(io.StringIO("/help kb\n\n/alerts\nhello\n/quit\n/status\n"), prompt="> ")
    finally:
        await console.stop()
    printed = output.getvalue()
    assert "/kb add <title> <content…>" in printed and "/kb search <query…>" in printed
    assert "No open alerts." in printed
    assert "Type /help to see what I can do." in printed
    assert "Orchestrator status" not in printed  # /quit stopped the loop
    assert printed.startswith("> ") and "> > No open alerts." in printed  # blank line: prompt again


async def test_streaming_to_the_terminal_prints_only_new_text(core: ChatCore, tmp_path: Path) -> None:
    output = io.StringIO()
    console = ConsolePlatform(
        sink=core.dispatcher.handle_event, user_id="alice", output=output, files_dir=tmp_path / "files"
    )
    conversation = console.conversation(console.place)
    anchor = await conversation.say("Task #1: summarise")
    thread = await conversation.open_thread(title="Task #1", anchor=anchor)
    renderer = StreamRenderer(thread)
    tokens = [f"token{i} " for i in range(40)]
    for token in tokens:
        renderer.feed(token)
        await asyncio_yield()
    await renderer.finish()
    console.screen.close_line()
    assert output.getvalue().count("token39") == 1  # never reprinted whole
    assert console.messages[-1].text == "".join(tokens)
    assert console.messages[-1].thread_id == anchor.message_id
    await thread.upload(filename="../../etc/passwd", content=b"full answer")
    saved = console.files[-1]
    assert saved.parent == tmp_path / "files" and saved.read_bytes() == b"full answer"


async def asyncio_yield() -> None:
    import asyncio

    await asyncio.sleep(0)


def test_orchestrator_chat_command_end_to_end(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORCH_")}
    env.update(ORCH_DATA_DIR=str(tmp_path / "data"), ORCH_LANGUAGE="pt-BR", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "chat",
            "-c",
            '/kb add "Guia" conteúdo do guia',
            "-c",
            "/kb search guia",
            "-c",
            "/logs --limit 0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Adicionado #1 “Guia”." in result.stdout  # the seeded admin speaks the workspace language
    assert "1 resultado(s) para “guia”" in result.stdout
    assert "limit deve ser no mínimo 1." in result.stdout and "Uso: /logs" in result.stdout
    again = subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--as", "nobody", "-c", "/status"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 2 and "no active user 'nobody'" in again.stderr
