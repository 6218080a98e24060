"""Chat front benchmark: first visible update, edit rate, command throughput — against local fakes.

    python -m bench.chat --json            # the last line is one JSON object
    python -m bench.chat --stream-seconds 10

A real LM Studio client streams from the local LM Studio fake; the tokens go through our
StreamRenderer into the real slack_sdk / discord.py clients, which talk to the local Slack and
Discord fakes. Times are taken from one monotonic clock in this process: "first update" runs from
the moment the provider client yields the model's first token to the moment the platform fake
receives the first request that makes it visible (chat.startStream / chat.postMessage, POST
message). Edits per minute count every edit (or append) of the streamed messages during a stream of
`--stream-seconds` (Slack native stream = appends; Slack without native streaming = chat.update;
Discord = PATCH). Throughput: 100 signed Slack slash commands sent at once to the HTTP endpoint,
until all 100 replies reached the fake.

Keys: first_update_ms {slack, discord} (median of 5), edits_per_min {slack, slack_edit_mode,
discord}, commands_per_s, plus the limits they are held to.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pydantic import SecretStr

from bot.commands import CommandDispatcher, PermissionPolicy, Services, build_registry
from bot.engine.providers.lmstudio import LMStudioProvider
from bot.engine.providers.port import ChatMessage, ChatRequest
from bot.platforms.discord_platform import DiscordChannelConversation, DiscordPlatform
from bot.platforms.events import Conversation, Place, Sender
from bot.platforms.slack import SlackConversation, SlackPlatform
from bot.platforms.streaming import StreamRenderer
from bot.settings import DiscordSettings, SlackSettings
from tests.fakes.discord import APPLICATION_ID, FakeDiscord
from tests.fakes.lmstudio import FakeLMStudio
from tests.fakes.slack import FakeSlack

SECRET = "bench-signing-secret"
LIMITS = {"slack_chat_update_per_min": 50, "slack_append_stream_per_min": 100, "discord_edits_per_min": 60}


async def _stream(provider: LMStudioProvider, model: str, conversation: Conversation, budget: Any = None) -> float:
    """Stream one answer into a conversation; returns the monotonic time of the model's first token."""
    renderer = StreamRenderer(conversation, budget=budget)
    first_token_at = 0.0
    request = ChatRequest(model=model, messages=[ChatMessage(role="user", content="go")])
    async for delta in provider.stream_chat(request):
        if delta.text:
            if not first_token_at:
                first_token_at = time.monotonic()
            renderer.feed(delta.text)
    await renderer.finish()
    return first_token_at


def _first_after(times: list[float], start: float) -> float:
    return min(t for t in times if t >= start)


async def first_update(
    lmstudio: FakeLMStudio,
    slack_platform: SlackPlatform,
    slack: FakeSlack,
    discord_platform: DiscordPlatform,
    discord: FakeDiscord,
) -> dict[str, float]:
    """Median ms from first model token to the first request that makes it visible, per platform."""
    provider = LMStudioProvider(name="bench", base_url=lmstudio.url)
    lmstudio.script("quick", tokens=[f"t{i} " for i in range(20)], token_delay_s=0.01)
    slack_ms, discord_ms = [], []
    try:
        for run in range(5):
            thread = f"1700000000.{run:06d}"
            conversation = SlackConversation(
                slack_platform, Place("slack", f"CB{run}", thread), Sender("slack", "UBENCH", team_id="T0001")
            )
            began = await _stream(provider, "quick", conversation)
            visible = [c.at for c in slack.calls() if c.method in ("chat.startStream", "chat.postMessage")]
            slack_ms.append((_first_after(visible, began) - began) * 1000)
            assert discord_platform.rest is not None
            channel = f"71000000000000000{run}"
            began = await _stream(
                provider, "quick", DiscordChannelConversation(discord_platform.rest, Place("discord", channel))
            )
            posted = [c.at for c in discord.calls("POST", f"/channels/{channel}/messages")]
            discord_ms.append((_first_after(posted, began) - began) * 1000)
    finally:
        await provider.aclose()
    return {"slack": round(statistics.median(slack_ms), 1), "discord": round(statistics.median(discord_ms), 1)}


async def edit_rates(
    lmstudio: FakeLMStudio,
    seconds: float,
    slack_platform: SlackPlatform,
    slack: FakeSlack,
    slack_edits_platform: SlackPlatform,
    slack_edits: FakeSlack,
    discord_platform: DiscordPlatform,
    discord: FakeDiscord,
) -> dict[str, float]:
    """Updates per minute of one message while a model streams for `seconds` (three streams at once)."""
    tokens = max(20, int(seconds * 20))
    lmstudio.script("long", tokens=[f"w{i} " for i in range(tokens)], token_delay_s=seconds / tokens)
    provider = LMStudioProvider(name="bench-long", base_url=lmstudio.url)
    assert discord_platform.rest is not None
    native = SlackConversation(
        slack_platform, Place("slack", "CLONG", "1700000001.000001"), Sender("slack", "UBENCH", team_id="T0001")
    )
    edited = SlackConversation(
        slack_edits_platform, Place("slack", "CLONG", "1700000001.000002"), Sender("slack", "UBENCH", team_id="T0001")
    )
    channel = "720000000000000001"
    started = time.monotonic()
    try:
        await asyncio.gather(
            _stream(provider, "long", native),
            _stream(provider, "long", edited, budget=slack_edits_platform.edit_budget),
            _stream(provider, "long", DiscordChannelConversation(discord_platform.rest, Place("discord", channel))),
        )
    finally:
        await provider.aclose()
    minutes = (time.monotonic() - started) / 60

    def per_min(count: int) -> float:
        return round(count / minutes, 1)

    expected = "".join(f"w{i} " for i in range(tokens))
    native_messages = slack.channel_messages("CLONG")
    edited_messages = slack_edits.channel_messages("CLONG")
    discord_messages = discord.channel_messages(channel)
    complete = (
        "".join(m.text for m in native_messages) == expected
        and "".join(m.text for m in edited_messages) == expected
        and "".join(m.content for m in discord_messages) == expected
    )
    if not complete:
        raise SystemExit("a streamed message lost tokens; the benchmark result would be meaningless")

    def updates(messages: list[Any]) -> int:
        # Edits (or appends) of existing messages; posting a continuation message is not an edit.
        return sum(len(m.versions) - 1 for m in messages)

    return {
        "slack": per_min(updates(native_messages)),
        "slack_edit_mode": per_min(updates(edited_messages)),
        "discord": per_min(updates(discord_messages)),
    }


def _signed(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    signature = "v0=" + hmac.new(SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


async def throughput(slack_platform: SlackPlatform, slack: FakeSlack, count: int = 100) -> float:
    """Commands per second: `count` signed slash commands at once, until every reply reached Slack."""
    lines = ["/help", "/kb search deploy", "/alerts", "/instructions", "/ais", "/templates", "/ranking"]
    before = len(slack.calls("chat.postMessage"))
    started = time.monotonic()
    bodies = []
    for index in range(count):
        name, _, text = lines[index % len(lines)].partition(" ")
        form = {
            "team_id": "T0001",
            "channel_id": "CTHRU",
            "user_id": "UBENCH",
            "user_name": "bench",
            "command": name,
            "text": text,
            "trigger_id": f"t{index}",
            "response_url": "https://hooks.invalid/x",
        }
        bodies.append(urlencode(form).encode())
    statuses = await asyncio.gather(*(slack_platform.handle_http(body, _signed(body)) for body in bodies))
    if any(status != 200 for status, _, _ in statuses):
        raise SystemExit("a command was not acknowledged")
    await _until(lambda: len(slack.calls("chat.postMessage")) - before >= count, limit_s=120)
    return round(count / (time.monotonic() - started), 1)


async def _until(condition: Callable[[], bool], *, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the platform fake")
        await asyncio.sleep(0.01)


async def _dispatcher(directory: Path) -> tuple[CommandDispatcher, Any]:
    from bot.commands.permissions import link_identity
    from bot.db.engine import create_engine, session_factory
    from bot.db.migrate import upgrade_to_head
    from bot.db.models import User, UserRole

    url = f"sqlite+aiosqlite:///{directory / 'bench.db'}"
    await upgrade_to_head(url, backup_dir=None)
    engine = create_engine(url)
    sessions = session_factory(engine)
    async with sessions() as session:
        user = User(username="bench", role=UserRole.OPERATOR)
        session.add(user)
        await session.flush()
        await link_identity(session, user_id=user.id, sender=Sender("slack", "UBENCH"))
        await session.commit()
    registry = build_registry()
    return CommandDispatcher(
        registry=registry, services=Services(session_factory=sessions), policy=PermissionPolicy()
    ), engine


async def run(stream_seconds: float) -> dict[str, Any]:
    """Every measurement, against fresh fakes and a fresh SQLite database."""
    with tempfile.TemporaryDirectory() as directory:
        dispatcher, engine = await _dispatcher(Path(directory))
        async with (
            FakeLMStudio() as lmstudio,
            FakeSlack() as slack,
            FakeSlack(streaming_supported=False) as slack_edits,
            FakeDiscord() as discord,
        ):

            def slack_settings(fake: FakeSlack) -> SlackSettings:
                return SlackSettings(
                    bot_token=SecretStr(fake.bot_token), signing_secret=SecretStr(SECRET), api_base_url=fake.api_url
                )

            slack_platform = SlackPlatform(settings=slack_settings(slack), sink=dispatcher.handle_event)
            slack_edits_platform = SlackPlatform(settings=slack_settings(slack_edits), sink=dispatcher.handle_event)
            discord_platform = DiscordPlatform(
                settings=DiscordSettings(
                    bot_token=SecretStr(discord.bot_token), api_base_url=discord.api_url, application_id=APPLICATION_ID
                ),
                sink=dispatcher.handle_event,
                gateway=False,
            )
            for platform in (slack_platform, slack_edits_platform, discord_platform):
                await platform.start()
            try:
                first = await first_update(lmstudio, slack_platform, slack, discord_platform, discord)
                rates = await edit_rates(
                    lmstudio,
                    stream_seconds,
                    slack_platform,
                    slack,
                    slack_edits_platform,
                    slack_edits,
                    discord_platform,
                    discord,
                )
                commands = await throughput(slack_platform, slack)
            finally:
                for platform in (slack_platform, slack_edits_platform, discord_platform):
                    await platform.stop()
        await engine.dispose()
    return {
        "first_update_ms": first,
        "first_update_goal_ms": 300,
        "edits_per_min": rates,
        "edit_limits_per_min": LIMITS,
        "stream_seconds": stream_seconds,
        "commands_per_s": commands,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; with --json the last line is the result object."""
    parser = argparse.ArgumentParser(prog="python -m bench.chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--stream-seconds", type=float, default=60.0, help="length of the edit-rate stream")
    args = parser.parse_args(argv)
    from bot.logs import configure_logging

    configure_logging(level="WARNING", fmt="json", stream=sys.stderr)
    result = asyncio.run(run(args.stream_seconds))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
