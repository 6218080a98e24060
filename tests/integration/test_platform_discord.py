"""Discord end to end: the real discord.py against a local Discord (REST + gateway) and signed HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

from bot.commands import build_registry
from bot.platforms.discord_platform import (
    DiscordChannelConversation,
    DiscordPlatform,
    command_payloads,
    interaction_command_line,
    sync_commands,
)
from bot.platforms.errors import PlatformConfigError
from bot.platforms.events import Place
from bot.platforms.streaming import StreamRenderer
from bot.settings import DiscordSettings
from tests.fakes.chat_db import ChatCore, chat_core, fresh_sqlite_copy, migrated_sqlite_template
from tests.fakes.discord import APPLICATION_ID, FakeDiscord
from tests.fakes.slack import wait_until

SIGNING_KEY = Ed25519PrivateKey.generate()
PUBLIC_KEY_HEX = SIGNING_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite_template(str(tmp_path_factory.mktemp("chat-template")))


@pytest.fixture
async def core(sqlite_template: str, tmp_path: Path) -> AsyncIterator[ChatCore]:
    async with chat_core(fresh_sqlite_copy(sqlite_template, str(tmp_path))) as built:
        yield built


def settings_for(fake: FakeDiscord, **extra: str) -> DiscordSettings:
    return DiscordSettings(bot_token=SecretStr(fake.bot_token), api_base_url=fake.api_url, **extra)


def signed(body: bytes, *, timestamp: int | None = None, key: Ed25519PrivateKey = SIGNING_KEY) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-Signature-Ed25519": key.sign(ts.encode() + body).hex(),
        "X-Signature-Timestamp": ts,
        "Content-Type": "application/json",
    }


async def test_gateway_ready_then_interaction_deferred_then_edited(fake_discord: FakeDiscord, core: ChatCore) -> None:
    registry = core.dispatcher.registry
    platform = DiscordPlatform(
        settings=settings_for(fake_discord),
        sink=core.dispatcher.handle_event,
        registry=registry,
        guild_ready_timeout_s=0.05,
    )
    await platform.start()
    try:
        assert fake_discord.identified == 1
        assert fake_discord.calls("GET", "/gateway/bot")
        started = time.monotonic()
        interaction_id, token = await fake_discord.dispatch_interaction(user_id="1001", name="help")
        await wait_until(lambda: interaction_id in fake_discord.callbacks, what="defer")
        assert time.monotonic() - started < 3.0
        assert fake_discord.callbacks[interaction_id] == {"type": 5}
        await wait_until(
            lambda: (
                "/status"
                in (fake_discord.original_for(token) or object.__new__(type("M", (), {"content": ""}))).content
            ),
            what="edited original",
        )
        # Subcommand with options, from a pt-BR user: parsed by the same registry, answered in Portuguese.
        _, token2 = await fake_discord.dispatch_interaction(
            user_id="1003",
            name="kb",
            options=[
                {
                    "type": 1,
                    "name": "search",
                    "options": [
                        {"type": 3, "name": "query", "value": "nothing here"},
                        {"type": 4, "name": "limit", "value": 3},
                    ],
                }
            ],
        )
        await wait_until(
            lambda: "Nada encontrado" in getattr(fake_discord.original_for(token2), "content", ""), what="pt-BR reply"
        )
        # An unknown Discord user is refused.
        _, token3 = await fake_discord.dispatch_interaction(user_id="555", name="status")
        await wait_until(
            lambda: "don't know you" in getattr(fake_discord.original_for(token3), "content", ""), what="denial"
        )
        await platform.wait_idle()
        outcomes = [(r.platform, r.action, str(r.outcome)) for r in await core.audit_rows()]
        assert outcomes == [
            ("discord", "command.help", "success"),
            ("discord", "command.kb.search", "success"),
            ("discord", "command.status", "denied"),
        ]
    finally:
        await platform.stop()


async def test_status_card_is_an_embed(fake_discord: FakeDiscord, core: ChatCore) -> None:
    platform = DiscordPlatform(
        settings=settings_for(fake_discord),
        sink=core.dispatcher.handle_event,
        registry=core.dispatcher.registry,
        guild_ready_timeout_s=0.05,
    )
    await platform.start()
    try:
        _, token = await fake_discord.dispatch_interaction(user_id="1001", name="status", guild_id="600000000000000001")
        await wait_until(lambda: bool(getattr(fake_discord.original_for(token), "embeds", [])), what="embed")
        (embed,) = fake_discord.original_for(token).embeds  # type: ignore[union-attr]
        assert embed["title"] == "Orchestrator status"
        assert any(field["name"] == "Machine" for field in embed["fields"])
    finally:
        await platform.stop()


async def test_rejected_token(fake_discord: FakeDiscord, core: ChatCore) -> None:
    settings = DiscordSettings(bot_token=SecretStr("wrong"), api_base_url=fake_discord.api_url)
    platform = DiscordPlatform(settings=settings, sink=core.dispatcher.handle_event)
    with pytest.raises(PlatformConfigError):
        await platform.start()
    await platform.stop()


async def test_http_interactions_ed25519(fake_discord: FakeDiscord, core: ChatCore) -> None:
    settings = settings_for(fake_discord, public_key=PUBLIC_KEY_HEX, application_id=APPLICATION_ID)
    platform = DiscordPlatform(
        settings=settings, sink=core.dispatcher.handle_event, registry=core.dispatcher.registry, gateway=False
    )
    await platform.start()
    try:
        ping = json.dumps({"id": "1", "type": 1, "application_id": APPLICATION_ID, "token": "t", "version": 1}).encode()
        status, _, answer = await platform.handle_http(ping, signed(ping))
        assert (status, json.loads(answer)) == (200, {"type": 1})

        payload = fake_discord.interaction_payload(user_id="1002", name="ais")
        body = json.dumps(payload).encode()
        status, _, answer = await platform.handle_http(body, signed(body))
        assert (status, json.loads(answer)) == (200, {"type": 5})
        fake_discord.accept_http_answer(payload, json.loads(answer))
        await wait_until(
            lambda: "Specialised AIs" in getattr(fake_discord.original_for(payload["token"]), "content", ""),
            what="edited original over REST",
        )

        other_key = Ed25519PrivateKey.generate()
        assert (await platform.handle_http(body, signed(body, key=other_key)))[0] == 401
        tampered = body.replace(b'"ais"', b'"status"')
        assert (await platform.handle_http(tampered, signed(body)))[0] == 401
        assert (await platform.handle_http(body, signed(body, timestamp=int(time.time()) - 3600)))[0] == 401
        assert (await platform.handle_http(body, {"Content-Type": "application/json"}))[0] == 401
        garbage = dict(signed(body), **{"X-Signature-Ed25519": "zz"})
        assert (await platform.handle_http(body, garbage))[0] == 401
        await platform.wait_idle()
        assert len(await core.audit_rows()) == 1  # only the valid command ran
    finally:
        await platform.stop()


async def test_sync_commands_guild_and_global(fake_discord: FakeDiscord) -> None:
    registry = build_registry()
    result = await sync_commands(settings=settings_for(fake_discord), registry=registry, guild_id="600000000000000001")
    assert {c["name"] for c in result} == set(registry.top_level_names())
    kb = next(c for c in fake_discord.commands["600000000000000001"] if c["name"] == "kb")
    search = next(o for o in kb["options"] if o["name"] == "search")
    assert search["type"] == 1 and search["description_localizations"]["pt-BR"].startswith("Pesquisa")
    assert [o["name"] for o in search["options"]] == ["query", "limit"]
    await sync_commands(settings=settings_for(fake_discord), registry=registry)
    assert {c["name"] for c in fake_discord.commands["global"]} == set(registry.top_level_names())
    for payload in command_payloads(registry):
        assert 1 <= len(payload["description"]) <= 100


def test_interaction_options_become_a_command_line() -> None:
    registry = build_registry()
    name, text = interaction_command_line(
        {
            "name": "kb",
            "options": [
                {
                    "type": 1,
                    "name": "add",
                    "options": [
                        {"type": 3, "name": "content", "value": 'body with "quotes"'},
                        {"type": 3, "name": "title", "value": "A title"},
                    ],
                }
            ],
        },
        registry,
    )
    assert (name, text) == ("kb", 'add "A title" body with "quotes"')
    parsed = registry.parse(name, text)
    assert parsed.args == {"title": "A title", "content": 'body with "quotes"'}


async def test_stream_edits_coalesced_and_429_honoured(fake_discord: FakeDiscord) -> None:
    events: list[object] = []

    async def sink(event: object, conversation: object) -> None:
        events.append(event)

    platform = DiscordPlatform(
        settings=settings_for(fake_discord, application_id=APPLICATION_ID), sink=sink, gateway=False
    )
    await platform.start()
    try:
        assert platform.rest is not None
        conversation = DiscordChannelConversation(platform.rest, Place("discord", "700000000000000009"))
        anchor = await conversation.say("Task 1")
        thread = await conversation.open_thread(title="Task 1", anchor=anchor)
        fake_discord.rate_limit("PATCH", times=1, retry_after=0.3)
        renderer = StreamRenderer(thread)
        tokens = [f"t{i} " for i in range(150)]
        renderer.feed(tokens[0])
        thread_id = thread.place.channel_id
        await wait_until(lambda: bool(fake_discord.channel_messages(thread_id)), what="first post in thread")
        for token in tokens[1:75]:
            renderer.feed(token)
        await wait_until(lambda: len(fake_discord.calls("PATCH")) >= 2, what="an edit after the 429")
        for token in tokens[75:]:
            renderer.feed(token)
        result = await renderer.finish()
        (thread_info,) = fake_discord.threads
        messages = fake_discord.channel_messages(thread_info["id"])
        assert "".join(m.content for m in messages) == "".join(tokens)
        assert result.edits >= 2
        patches = fake_discord.calls("PATCH")
        assert len(patches) == result.edits + 1  # one 429, then the same edit again
        for message in messages:
            gaps = [b - a for a, b in zip(message.edit_times, message.edit_times[1:], strict=False)]
            assert all(gap >= 0.95 for gap in gaps), gaps
    finally:
        await platform.stop()


async def test_long_output_splits_at_2000(fake_discord: FakeDiscord) -> None:
    async def sink(event: object, conversation: object) -> None:
        return None

    platform = DiscordPlatform(
        settings=settings_for(fake_discord, application_id=APPLICATION_ID), sink=sink, gateway=False
    )
    await platform.start()
    try:
        assert platform.rest is not None
        conversation = DiscordChannelConversation(platform.rest, Place("discord", "700000000000000010"))
        text = "".join(f"paragraph {i}\n" + "word " * 60 + "\n\n" for i in range(20))  # ≈ 6,500 chars
        renderer = StreamRenderer(conversation)
        renderer.feed(text)
        await renderer.finish()
        messages = fake_discord.channel_messages("700000000000000010")
        assert len(messages) == 4 and all(len(m.content) <= 2000 for m in messages)
        assert "".join(m.content for m in messages) == text
        assert all(m.content.endswith("\n") for m in messages[:-1])  # cut at line boundaries
        # Past five messages the rest goes to an attached file, complete.
        huge = "x" * 12_500
        renderer = StreamRenderer(conversation, filename="answer.txt")
        renderer.feed(huge)
        result = await renderer.finish()
        assert result.uploaded
        uploads = [m for m in fake_discord.channel_messages("700000000000000010") if m.attachments]
        assert uploads[-1].attachments[0]["content"].decode() == huge
    finally:
        await platform.stop()


async def test_orchestrator_discord_sync_cli(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    import asyncio
    import os
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {key: value for key, value in os.environ.items() if not key.startswith("ORCH_")}
    env.update(
        ORCH_DATA_DIR=str(tmp_path),
        ORCH_DISCORD__BOT_TOKEN=fake_discord.bot_token,
        ORCH_DISCORD__API_BASE_URL=fake_discord.api_url,
        PYTHONPATH=str(repo),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "discord",
        "sync",
        "--guild",
        "600000000000000001",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert "synced" in stdout.decode() and "/kb" in stdout.decode()
    assert {c["name"] for c in fake_discord.commands["600000000000000001"]} >= {"help", "kb", "models", "status"}
    env["ORCH_DISCORD__BOT_TOKEN"] = "wrong"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "discord",
        "sync",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2 and "rejected the bot token" in stderr.decode()
    assert "wrong" not in stderr.decode()


async def test_alerts_go_to_the_alert_channel_and_resolve_in_its_thread(fake_discord: FakeDiscord) -> None:
    from bot.events import Event, EventBus
    from bot.platforms.alerts import AlertRelay, AlertTarget

    async def sink(event: object, conversation: object) -> None:
        return None

    platform = DiscordPlatform(
        settings=settings_for(fake_discord, application_id=APPLICATION_ID), sink=sink, gateway=False
    )
    await platform.start()
    bus = EventBus()
    relay = AlertRelay(bus=bus, targets=[AlertTarget(platform, Place("discord", "700000000000000077"), "pt-BR")])
    await relay.start()
    try:
        payload = {
            "rule": "cpu_high",
            "severity": "critical",
            "reading": "cpu_pct",
            "messages": {"en": "High CPU: new tasks are paused", "pt-BR": "CPU alta: novas tarefas estão pausadas"},
        }
        bus.publish(Event(topic="monitor", kind="alert", payload=payload))
        await wait_until(lambda: bool(fake_discord.channel_messages("700000000000000077")), what="alert card")
        (card,) = fake_discord.channel_messages("700000000000000077")
        assert card.embeds[0]["color"] == 0xE01E5A and card.embeds[0]["title"].startswith("Alerta Crítico")
        cleared = dict(payload, severity="info", messages={"en": "CPU back to normal", "pt-BR": "CPU normalizada"})
        bus.publish(Event(topic="monitor", kind="alert_cleared", payload=cleared))
        await wait_until(lambda: bool(fake_discord.threads), what="resolution thread")
        thread_id = fake_discord.threads[0]["id"]
        await wait_until(lambda: bool(fake_discord.channel_messages(thread_id)), what="resolution")
        assert fake_discord.channel_messages(thread_id)[0].content == "Resolvido: CPU normalizada"
    finally:
        await relay.stop()
        await platform.stop()
