"""Slack end to end: the real slack-bolt/slack_sdk against a local Slack (Web API + Socket Mode)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr

from bot.platforms.errors import PlatformConfigError
from bot.platforms.events import Place, Sender
from bot.platforms.slack import SlackConversation, SlackPlatform
from bot.platforms.streaming import StreamRenderer
from bot.settings import SlackSettings
from tests.fakes.chat_db import ChatCore, chat_core, fresh_sqlite_copy, migrated_sqlite_template
from tests.fakes.slack import FakeSlack, wait_until

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite_template(str(tmp_path_factory.mktemp("chat-template")))


@pytest.fixture
async def core(sqlite_template: str, tmp_path: Path) -> AsyncIterator[ChatCore]:
    # The wire is what is under test here; the commands run on both databases in test_commands.
    async with chat_core(fresh_sqlite_copy(sqlite_template, str(tmp_path))) as built:
        yield built


class RecordingSink:
    """A sink for tests that exercise the wire only (no database needed)."""

    def __init__(self) -> None:
        self.events: list[object] = []

    async def __call__(self, event: object, conversation: object) -> None:
        self.events.append(event)


def socket_settings(fake: FakeSlack) -> SlackSettings:
    return SlackSettings(
        bot_token=SecretStr(fake.bot_token), app_token=SecretStr(fake.app_token), api_base_url=fake.api_url
    )


def http_settings(fake: FakeSlack) -> SlackSettings:
    return SlackSettings(
        bot_token=SecretStr(fake.bot_token), signing_secret=SecretStr(SIGNING_SECRET), api_base_url=fake.api_url
    )


def slash(user: str, command: str, text: str, channel: str = "C100") -> dict[str, str]:
    return {
        "token": "unused",
        "team_id": "T0001",
        "team_domain": "fake",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": "someone",
        "command": command,
        "text": text,
        "api_app_id": "A0001",
        "response_url": "https://hooks.invalid/commands/1",
        "trigger_id": f"trigger-{time.monotonic_ns()}",
    }


def signed_headers(body: bytes, *, timestamp: int | None = None, secret: str = SIGNING_SECRET) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = f"v0:{ts}:".encode() + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def texts(fake: FakeSlack, channel: str = "C100") -> list[str]:
    return [m.text for m in fake.channel_messages(channel)]


async def test_socket_mode_handshake_command_and_reply(fake_slack: FakeSlack, core: ChatCore) -> None:
    platform = SlackPlatform(settings=socket_settings(fake_slack), sink=core.dispatcher.handle_event)
    await platform.start()
    try:
        assert fake_slack.connections_opened == 1
        assert fake_slack.calls("apps.connections.open")[0].token == fake_slack.app_token
        started = time.monotonic()
        envelope = await fake_slack.push("slash_commands", slash("UALICE", "/help", ""))
        await fake_slack.wait_ack(envelope)
        assert time.monotonic() - started < 3.0
        await wait_until(lambda: any("/status" in t for t in texts(fake_slack)), what="help reply")
        # A viewer writing in Portuguese gets Portuguese; an unknown id is refused.
        await fake_slack.wait_ack(await fake_slack.push("slash_commands", slash("UVERA", "/alerts", "")))
        await wait_until(lambda: any("Nenhum alerta aberto" in t for t in texts(fake_slack)), what="pt-BR reply")
        await fake_slack.wait_ack(await fake_slack.push("slash_commands", slash("USTRANGER", "/status", "")))
        await wait_until(lambda: any("don't know you" in t for t in texts(fake_slack)), what="denial")
        await platform.wait_idle()
        rows = await core.audit_rows()
        assert [(r.platform, r.action, str(r.outcome)) for r in rows] == [
            ("slack", "command.help", "success"),
            ("slack", "command.alerts.list", "success"),
            ("slack", "command.status", "denied"),
        ]
        assert rows[2].actor_user_id is None and rows[2].detail["platform_user_id"] == "USTRANGER"
    finally:
        await platform.stop()


async def test_socket_mode_reconnects_after_drop(fake_slack: FakeSlack, core: ChatCore) -> None:
    platform = SlackPlatform(settings=socket_settings(fake_slack), sink=core.dispatcher.handle_event)
    await platform.start()
    try:
        await fake_slack.drop_sockets()
        await wait_until(
            lambda: fake_slack.connections_opened >= 2 and bool(fake_slack.sockets),
            timeout=15,
            what="socket mode reconnect",
        )
        await fake_slack.wait_ack(await fake_slack.push("slash_commands", slash("UALICE", "/ais", "")))
        await wait_until(lambda: any("Specialised AIs" in t for t in texts(fake_slack)), what="reply after reconnect")
    finally:
        await platform.stop()


async def test_rejected_token_is_a_config_error(fake_slack: FakeSlack) -> None:
    settings = SlackSettings(
        bot_token=SecretStr("xoxb-wrong"), app_token=SecretStr(fake_slack.app_token), api_base_url=fake_slack.api_url
    )
    platform = SlackPlatform(settings=settings, sink=RecordingSink())
    with pytest.raises(PlatformConfigError, match="invalid_auth"):
        await platform.start()
    await platform.stop()


async def test_http_mode_signatures(fake_slack: FakeSlack, core: ChatCore) -> None:
    platform = SlackPlatform(settings=http_settings(fake_slack), sink=core.dispatcher.handle_event)
    await platform.start()
    try:
        body = urlencode(slash("UALICE", "/status", "")).encode()
        status, _headers, _ = await platform.handle_http(body, signed_headers(body))
        assert status == 200
        await wait_until(lambda: any("Orchestrator status" in t for t in texts(fake_slack)), what="status reply")

        bad = dict(signed_headers(body), **{"X-Slack-Signature": "v0=" + "0" * 64})
        assert (await platform.handle_http(body, bad))[0] == 401
        stale = signed_headers(body, timestamp=int(time.time()) - 301)
        assert (await platform.handle_http(body, stale))[0] == 401
        wrong_secret = signed_headers(body, secret="another-secret")
        assert (await platform.handle_http(body, wrong_secret))[0] == 401
        unsigned = {"Content-Type": "application/x-www-form-urlencoded"}
        assert (await platform.handle_http(body, unsigned))[0] == 401
        await platform.wait_idle()
        assert len(fake_slack.calls("chat.postMessage")) == 1  # only the valid request did anything

        challenge = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "x"}).encode()
        headers = dict(signed_headers(challenge), **{"Content-Type": "application/json"})
        status, _, answer = await platform.handle_http(challenge, headers)
        assert status == 200 and b"abc123" in answer
    finally:
        await platform.stop()


async def test_http_mode_replayed_event_is_handled_once(fake_slack: FakeSlack, core: ChatCore) -> None:
    platform = SlackPlatform(settings=http_settings(fake_slack), sink=core.dispatcher.handle_event)
    await platform.start()
    try:
        event = {
            "token": "x",
            "team_id": "T0001",
            "api_app_id": "A0001",
            "type": "event_callback",
            "event_id": "Ev0001",
            "event_time": int(time.time()),
            "event": {
                "type": "app_mention",
                "user": "UALICE",
                "text": "<@UBOT> /kb search nothing-here",
                "ts": "1700000000.000100",
                "channel": "C200",
                "event_ts": "1700000000.000100",
            },
        }
        body = json.dumps(event).encode()
        headers = dict(signed_headers(body), **{"Content-Type": "application/json"})
        started = time.monotonic()
        assert (await platform.handle_http(body, headers))[0] == 200
        assert time.monotonic() - started < 3.0
        retry = dict(
            signed_headers(body),
            **{"Content-Type": "application/json", "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"},
        )
        assert (await platform.handle_http(body, retry))[0] == 200
        await platform.wait_idle()
        await wait_until(lambda: len(fake_slack.calls("chat.postMessage")) >= 1, what="mention reply")
        replies = fake_slack.calls("chat.postMessage")
        assert len(replies) == 1
        assert replies[0].args["thread_ts"] == "1700000000.000100"
        assert "Nothing found" in replies[0].args["text"]
    finally:
        await platform.stop()


async def test_native_stream_first_token_fast_and_complete(fake_slack: FakeSlack) -> None:
    platform = SlackPlatform(settings=http_settings(fake_slack), sink=RecordingSink())
    await platform.start()
    try:
        sender = Sender(platform="slack", user_id="UALICE", team_id="T0001")
        conversation = SlackConversation(platform, Place("slack", "C300", "1700000000.000200"), sender)
        renderer = StreamRenderer(conversation)
        tokens = [f"tok{i} " for i in range(300)]
        started = time.monotonic()
        renderer.feed(tokens[0])
        await wait_until(lambda: bool(fake_slack.calls("chat.startStream")), what="stream start")
        assert time.monotonic() - started < 1.0  # the 300 ms goal is measured by bench.chat, unloaded
        for token in tokens[1:]:
            renderer.feed(token)
        result = await renderer.finish()
        start = fake_slack.calls("chat.startStream")[0].args
        assert start["recipient_user_id"] == "UALICE" and start["recipient_team_id"] == "T0001"
        assert result.native
        (message,) = [m for m in fake_slack.channel_messages("C300")]
        assert message.text == "".join(tokens) and not message.streaming
    finally:
        await platform.stop()


async def test_edits_fallback_with_429_loses_no_token() -> None:
    async with FakeSlack(streaming_supported=False) as fake:
        platform = SlackPlatform(settings=http_settings(fake), sink=RecordingSink())
        await platform.start()
        try:
            conversation = SlackConversation(
                platform, Place("slack", "C400", "1700000000.000300"), Sender("slack", "UALICE")
            )
            fake.rate_limit("chat.update", times=2, retry_after=1)
            renderer = StreamRenderer(conversation, budget=platform.edit_budget)
            tokens = [f"w{i} " for i in range(200)]
            for index, token in enumerate(tokens):
                renderer.feed(token)
                if index == 5:
                    await wait_until(lambda: bool(fake.calls("chat.postMessage")), what="first post")
            result = await renderer.finish()
            assert not result.native and result.rate_limited == 2
            (message,) = fake.channel_messages("C400")
            assert message.text == "".join(tokens)
            gaps = [b - a for a, b in zip(message.update_times, message.update_times[1:], strict=False)]
            assert all(gap >= 0.95 for gap in gaps), gaps
        finally:
            await platform.stop()


async def test_overflow_goes_to_a_file(fake_slack: FakeSlack) -> None:
    platform = SlackPlatform(settings=http_settings(fake_slack), sink=RecordingSink(), native_streaming=False)
    await platform.start()
    try:
        conversation = SlackConversation(platform, Place("slack", "C500"), Sender("slack", "UALICE"))
        renderer = StreamRenderer(conversation)
        text = "".join(f"line {i:05d} " + "x" * 80 + "\n" for i in range(300))  # ≈ 27,000 chars
        renderer.feed(text)
        result = await renderer.finish()
        assert result.uploaded
        (upload,) = fake_slack.files
        assert upload["content"].decode() == text
        messages = fake_slack.channel_messages("C500")
        assert len(messages) == 5 and all(len(m.text) <= 3900 for m in messages)
        assert "".join(m.text for m in messages[:4]) == text[: sum(len(m.text) for m in messages[:4])]
    finally:
        await platform.stop()


async def test_alert_card_then_resolution_in_thread(fake_slack: FakeSlack) -> None:
    from bot.events import Event, EventBus
    from bot.platforms.alerts import AlertRelay, AlertTarget

    platform = SlackPlatform(settings=http_settings(fake_slack), sink=RecordingSink())
    await platform.start()
    bus = EventBus()
    relay = AlertRelay(bus=bus, targets=[AlertTarget(platform, Place("slack", "CALERTS"), "en")])
    await relay.start()
    try:
        payload = {
            "rule": "disk_full",
            "severity": "warning",
            "reading": "disk_pct",
            "messages": {"en": "Disk 88% full: caches cleaned", "pt-BR": "Disco 88% cheio"},
        }
        bus.publish(Event(topic="monitor", kind="alert", payload=payload))
        bus.publish(Event(topic="monitor", kind="sample", payload={}))  # not an alert: ignored
        await wait_until(lambda: bool(fake_slack.channel_messages("CALERTS")), what="alert")
        (card,) = fake_slack.channel_messages("CALERTS")
        assert card.text == "Warning alert: Disk 88% full: caches cleaned"
        assert card.blocks[0]["text"]["text"].startswith(":warning:")
        bus.publish(Event(topic="monitor", kind="alert_cleared", payload=dict(payload, severity="info")))
        await wait_until(lambda: len(fake_slack.channel_messages("CALERTS")) == 2, what="resolution")
        resolution = fake_slack.channel_messages("CALERTS")[1]
        assert resolution.thread_ts == card.ts and resolution.text.startswith("Resolved:")
    finally:
        await relay.stop()
        await platform.stop()


def test_manifest_registers_every_command_and_the_scopes_used() -> None:
    import yaml

    from bot.commands import build_registry

    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "slack" / "manifest.yml").read_text())
    declared = {entry["command"].lstrip("/") for entry in manifest["features"]["slash_commands"]}
    assert set(build_registry().top_level_names()) <= declared
    assert all(len(entry["description"]) <= 100 for entry in manifest["features"]["slash_commands"])
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"commands", "chat:write", "files:write", "app_mentions:read", "reactions:read"} <= scopes
    assert {"channels:history", "groups:history"} <= scopes  # thread replies in task threads
    assert set(manifest["settings"]["event_subscriptions"]["bot_events"]) == {
        "app_mention",
        "message.channels",
        "message.groups",
        "message.im",
        "reaction_added",
    }
    assert manifest["settings"]["socket_mode_enabled"] is True


async def test_http_mode_through_the_admin_api_route(fake_slack: FakeSlack, core: ChatCore, tmp_path: Path) -> None:
    """POST /slack/events on the admin API reaches the adapter: signed works, unsigned is refused."""
    from aiohttp.test_utils import TestClient, TestServer

    from admin_api.app import create_app
    from admin_api.state import Services
    from bot.settings import load_settings

    platform = SlackPlatform(settings=http_settings(fake_slack), sink=core.dispatcher.handle_event)
    await platform.start()
    settings = load_settings(environ={"ORCH_DATA_DIR": str(tmp_path / "data")})
    services = Services(extra={"chat": {"slack": platform}})
    async with TestClient(TestServer(create_app(settings=settings, session_factory=core.sessions,
                                                services=services))) as client:
        try:
            body = urlencode(slash("UALICE", "/status", "")).encode()
            response = await client.post("/slack/events", data=body, headers=signed_headers(body))
            assert response.status == 200
            await wait_until(lambda: any("Orchestrator status" in t for t in texts(fake_slack)), what="reply")
            forged = dict(signed_headers(body), **{"X-Slack-Signature": "v0=" + "1" * 64})
            assert (await client.post("/slack/events", data=body, headers=forged)).status == 401
            not_configured = await client.post("/discord/interactions", data=b"{}")
            assert not_configured.status == 404
            assert not_configured.headers["Content-Type"].startswith("application/problem+json")
        finally:
            await platform.wait_idle()
            await platform.stop()
