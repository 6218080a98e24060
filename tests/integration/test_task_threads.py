"""A task's thread end to end: follow-ups with history, dispute buttons, and a restart mid-task.

Real engine, queue and database (SQLite and MariaDB) against a local LM Studio whose two models
disagree (executor and validator answers differ, verdict score low, no third model to judge, tie
policy "escalate"), driven through the console, the Slack fake (Socket Mode and signed HTTP through
the admin API) and the Discord fake (gateway and signed HTTP interactions).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from bot.commands.threads import TaskThreads
from bot.commands.wiring import build_dispatcher
from bot.db.models import AiQualityMetric, AuditLog, ChatConversation, ChatMessage, Subtask, Task, User, UserIdentity
from bot.engine.runtime import EngineRuntime
from bot.platforms.console import ConsolePlatform
from bot.platforms.discord_platform import DiscordPlatform
from bot.platforms.slack import SlackPlatform
from bot.settings import DiscordSettings, SlackSettings
from tests.fakes import FakeLMStudio
from tests.fakes._base import schema_title
from tests.fakes.chat_db import IDS, PEOPLE
from tests.fakes.discord import APPLICATION_ID, FakeDiscord
from tests.fakes.slack import FakeSlack, wait_until
from tests.integration.test_engine import CANBERRA, PARIS, SYDNEY, plan, start_engine, step, stop, verdict
from tests.integration.test_platform_discord import PUBLIC_KEY_HEX, signed
from tests.integration.test_platform_slack import SIGNING_SECRET, signed_headers

FOLLOW_UP = "NEW MESSAGE FROM THE PERSON"


def answer_for(text: str) -> str:
    """The follow-up answer both models give (they agree on follow-ups): it names the question."""
    question = text.split(FOLLOW_UP + ":\n", 1)[1].split("\n\n", 1)[0]
    return f"About “{question}”: Canberra was a compromise between Sydney and Melbourne."


def responder(answer: str, *, disputed: bool = True, title: str = "capital of Australia") -> Callable[[Any], str]:
    """One model: plans, answers `answer`, and as validator rejects (disputed) — agreeing on follow-ups."""

    def respond(body: dict[str, Any]) -> str:
        content = body["messages"][-1]["content"]
        followup = FOLLOW_UP in content
        schema = schema_title(body)
        if schema == "Plan":
            return json.dumps(plan(step(1, title)))
        if schema == "Verdict":
            if followup or not disputed:
                return json.dumps(verdict(95, "approve"))
            return json.dumps(verdict(25, "reject", "wrong capital"))
        return answer_for(content) if followup else answer

    return respond


def script_dispute(fake: FakeLMStudio) -> None:
    fake.script("aaa-wrong-7b", family="qwen", responder=responder(SYDNEY))
    fake.script("bbb-right-3b", family="llama", responder=responder(CANBERRA))


def script_agree(fake: FakeLMStudio, *, answer: str = PARIS, token_delay_s: float = 0.0) -> None:
    for name, family in (("qwen2.5-7b-instruct", "qwen"), ("llama-3.2-3b-instruct", "llama")):
        fake.script(name, family=family, token_delay_s=token_delay_s,
                    responder=responder(answer, disputed=False, title="capital of France"))


@pytest.fixture
async def lmstudio() -> AsyncIterator[FakeLMStudio]:
    async with FakeLMStudio() as server:
        yield server


async def add_people(runtime: EngineRuntime) -> dict[str, int]:
    """alice admin, oscar operator, vera viewer (pt-BR), linked on slack, discord and console."""
    ids: dict[str, int] = {}
    async with runtime.sessions() as session, session.begin():
        for name, (role, language) in PEOPLE.items():
            user = User(username=name, display_name=name.title(), role=role, language=language)
            session.add(user)
            await session.flush()
            ids[name] = user.id
            for platform, platform_id in IDS[name].items():
                session.add(UserIdentity(user_id=user.id, platform=platform, platform_user_id=platform_id))
    return ids


def dispatcher_for(runtime: EngineRuntime) -> tuple[Any, TaskThreads]:
    _registry, dispatcher = build_dispatcher(settings=runtime.settings, sessions=runtime.sessions,
                                             engine=runtime.engine, bus=runtime.bus)
    threads = dispatcher.services.components["threads"]
    assert isinstance(threads, TaskThreads)
    return dispatcher, threads


async def console_as(dispatcher: Any, name: str, tmp_path: Path) -> ConsolePlatform:
    console = ConsolePlatform(sink=dispatcher.handle_event, user_id=IDS.get(name, {}).get("console", name),
                              files_dir=tmp_path / f"files-{name}")
    await console.start()
    return console


async def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    await wait_until(condition, timeout=timeout, what=what)


async def rows(runtime: EngineRuntime, model: Any) -> list[Any]:
    async with runtime.sessions() as session:
        return list((await session.scalars(select(model).order_by(model.id))).all())


async def task_status(runtime: EngineRuntime, task_id: int) -> str:
    async with runtime.sessions() as session:
        task = await session.get(Task, task_id)
    return str(task.status) if task else "missing"


async def wait_status(runtime: EngineRuntime, task_id: int, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while await task_status(runtime, task_id) != status:
        assert time.monotonic() < deadline, f"task {task_id} is {await task_status(runtime, task_id)}"
        await asyncio.sleep(0.05)


def llm_prompts(fake: FakeLMStudio) -> list[str]:
    return [c.body["messages"][-1]["content"] for c in fake.calls("/v1/chat/completions")
            if "response_format" not in c.body]


# -- console ---------------------------------------------------------------------------------------
async def test_console_follow_ups_carry_the_history(migrated_db: str, lmstudio: FakeLMStudio,
                                                    tmp_path: Path) -> None:
    script_agree(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    await add_people(runtime)
    dispatcher, threads = dispatcher_for(runtime)
    oscar = await console_as(dispatcher, "oscar", tmp_path)
    vera = await console_as(dispatcher, "vera", tmp_path)
    stranger = await console_as(dispatcher, "mallory", tmp_path)
    try:
        await oscar.submit("/task What is the capital of France?")
        await until(lambda: any("Final answer" in m.text for m in oscar.messages), "final answer")
        await threads.wait_idle()
        thread_id = next(m.thread_id for m in oscar.messages if "Final answer" in m.text)

        first = await oscar.submit("reply 1 How many people live there?")
        assert any("How many people live there?" in text and "compromise" in text for text in first)
        second = await oscar.submit("reply #1 And who founded it?")
        assert any("And who founded it?" in text for text in second)
        shown = [m for m in oscar.messages if "And who founded it?" in m.text]
        assert shown and all(m.thread_id == thread_id for m in shown)  # in the task's thread
        prompt = next(p for p in llm_prompts(lmstudio) if "And who founded it?" in p.split(FOLLOW_UP)[-1])
        assert "What is the capital of France?" in prompt  # the original request
        assert PARIS in prompt  # the task's final answer
        assert "How many people live there?" in prompt and "About “How many people live there?”" in prompt

        messages = await rows(runtime, ChatMessage)
        assert [(str(m.role), m.content[:30]) for m in messages] == [
            ("user", "What is the capital of France?"),
            ("assistant", PARIS[:30]),
            ("user", "How many people live there?"),
            ("assistant", answer_for(f"{FOLLOW_UP}:\nHow many people live there?\n\n")[:30]),
            ("user", "And who founded it?"),
            ("assistant", answer_for(f"{FOLLOW_UP}:\nAnd who founded it?\n\n")[:30]),
        ]
        (conversation,) = await rows(runtime, ChatConversation)
        assert (conversation.platform, conversation.thread_id) == ("console", thread_id)
        tasks = await rows(runtime, Task)
        assert [t.conversation_id for t in tasks] == [conversation.id] * 3
        assert tasks[1].origin["followup_of"] == 1

        # A viewer may read but not continue; oversized and unknown are refused; nothing runs for them.
        assert any("operator role" in t or "papel operator" in t for t in await vera.submit("reply 1 more?"))
        too_long = await oscar.submit("reply 1 " + "x" * 9000)
        assert any("9,000 characters" in t and "8,000" in t for t in too_long)
        assert any("don't know you" in t for t in await stranger.submit("reply 1 hello"))
        assert any("no thread here" in t for t in await oscar.submit("reply 99 hello"))
        assert len(await rows(runtime, Task)) == 3
        audit = [(a.action, str(a.outcome)) for a in await rows(runtime, AuditLog) if a.action == "task.followup"]
        assert audit == [("task.followup", "success")] * 2 + [("task.followup", "denied"), ("task.followup", "failed")]
    finally:
        await threads.stop()
        for console in (oscar, vera, stranger):
            await console.stop()
        await stop(runtime)


async def test_console_dispute_choices_rerun_then_decide_once(migrated_db: str, lmstudio: FakeLMStudio,
                                                              tmp_path: Path) -> None:
    script_dispute(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path, tie_policy="escalate")
    await add_people(runtime)
    dispatcher, threads = dispatcher_for(runtime)
    oscar = await console_as(dispatcher, "oscar", tmp_path)
    vera = await console_as(dispatcher, "vera", tmp_path)
    try:
        await oscar.submit("/task Capital of Australia?")
        await until(lambda: len(oscar.choices) == 3, "dispute choices")
        card = next(m for m in oscar.messages if m.card is not None and m.card.actions)
        assert SYDNEY in card.text and CANBERRA in card.text and "choose <number>" in card.text
        numbers = {choice.action.action_id: n for n, choice in oscar.choices.items()}

        refused = await vera.submit(f"choose {numbers['dispute:executor']}")
        assert refused == ["“choose 1” is not an open choice; the numbers are shown under the card."]
        # The viewer's own console has no choices; press the operator's card as the viewer would.
        vera.choices = dict(oscar.choices)
        refused = await vera.submit(f"choose {numbers['dispute:executor']}")
        assert any("Só operators e admins" in t for t in refused)
        assert await task_status(runtime, 1) == "running"

        await oscar.submit(f"choose {numbers['dispute:rerun']}")
        await until(lambda: len(oscar.choices) == 3 and set(oscar.choices) != set(numbers.values()), "new card")
        second = {choice.action.action_id: n for n, choice in oscar.choices.items()}
        stale = await oscar.submit(f"choose {numbers['dispute:validator']}")
        assert "is not an open choice" in stale[0]  # the first card's buttons are gone

        await oscar.submit(f"choose {second['dispute:validator']}")
        await wait_status(runtime, 1, "completed")
        await threads.wait_idle()
        (sub,) = await rows(runtime, Subtask)
        validation = sub.validation or {}
        assert validation["decision"] == {"chosen": "validator", "by": "oscar"}
        assert len(validation["tiebreak_history"]) == 1
        async with runtime.sessions() as session:
            runs = (await session.scalars(select(AiQualityMetric.runs).where(
                AiQualityMetric.model_id == sub.executor_model_id, AiQualityMetric.category == sub.category))).all()
        assert list(runs) == [1]  # the re-run judged again; the execution itself counts once
        texts = [m.text for m in oscar.messages]
        assert any("oscar chose run the tie-break again" in t for t in texts)
        assert any("oscar chose the validator's answer" in t for t in texts)
        final = next(t for t in texts if t.startswith("Final answer"))
        assert validation["reference_answer"] in final
    finally:
        await threads.stop()
        await oscar.stop()
        await vera.stop()
        await stop(runtime)


# -- Slack -----------------------------------------------------------------------------------------
def slack_settings(fake: FakeSlack) -> SlackSettings:
    return SlackSettings(bot_token=SecretStr(fake.bot_token), app_token=SecretStr(fake.app_token),
                         signing_secret=SecretStr(SIGNING_SECRET), api_base_url=fake.api_url)


def slash(user: str, text: str) -> dict[str, str]:
    return {"token": "x", "team_id": "T0001", "channel_id": "C100", "user_id": user, "user_name": user.lower(),
            "command": "/task", "text": text, "api_app_id": "A0001", "trigger_id": f"t-{time.monotonic_ns()}",
            "response_url": "https://hooks.invalid/1"}


def block_actions(user: str, message: Any, action_id: str) -> dict[str, Any]:
    button = next(e for b in message.blocks if b["type"] == "actions" for e in b["elements"]
                  if e["action_id"] == action_id)
    return {
        "type": "block_actions", "token": "x", "api_app_id": "A0001", "trigger_id": f"t-{time.monotonic_ns()}",
        "user": {"id": user, "username": user.lower(), "team_id": "T0001"}, "team": {"id": "T0001"},
        "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel,
                      "is_ephemeral": False, "thread_ts": message.thread_ts},
        "channel": {"id": message.channel, "name": "general"},
        "message": {"type": "message", "ts": message.ts, "thread_ts": message.thread_ts, "text": message.text,
                    "blocks": message.blocks},
        "response_url": "https://hooks.invalid/2",
        "actions": [{"type": "button", "action_id": action_id, "block_id": "b", "value": button["value"],
                     "action_ts": str(time.time())}],
    }


def thread_reply(user: str, thread_ts: str, text: str, n: int) -> dict[str, Any]:
    ts = f"{int(time.time())}.9{n:05d}"
    return {"token": "x", "team_id": "T0001", "api_app_id": "A0001", "type": "event_callback",
            "event_id": f"EvReply{n}-{time.monotonic_ns()}", "event_time": int(time.time()),
            "event": {"type": "message", "channel_type": "channel", "user": user, "text": text, "ts": ts,
                      "thread_ts": thread_ts, "channel": "C100", "event_ts": ts}}


def cards(fake: FakeSlack) -> list[Any]:
    return [m for m in fake.channel_messages("C100")
            if m.blocks and any(b["type"] == "actions" for b in m.blocks)]


async def test_slack_dispute_buttons_socket_and_http_then_follow_up(migrated_db: str, lmstudio: FakeLMStudio,
                                                                    tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from admin_api.app import create_app
    from admin_api.state import Services

    script_dispute(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path, tie_policy="escalate")
    await add_people(runtime)
    dispatcher, threads = dispatcher_for(runtime)
    async with FakeSlack() as fake:
        platform = SlackPlatform(settings=slack_settings(fake), sink=dispatcher.handle_event)
        await platform.start()
        app = create_app(settings=runtime.settings, session_factory=runtime.sessions,
                         services=Services(extra={"chat": {"slack": platform}}))
        try:
            async with TestClient(TestServer(app)) as client:
                await fake.wait_ack(await fake.push("slash_commands", slash("UOSCAR", "Capital of Australia?")))
                await until(lambda: len(cards(fake)) == 1, "dispute card")
                card = copy.deepcopy(cards(fake)[0])  # as shown before any press (double clicks race the update)
                anchor = card.thread_ts
                assert anchor and fake.messages[anchor].text.startswith("Task #1 queued")
                assert "Executor" in json.dumps(card.blocks) and "Validator" in json.dumps(card.blocks)

                # A viewer's press is refused privately; nothing resumes.
                await fake.wait_ack(await fake.push("interactive", block_actions("UVERA", card, "dispute:executor")))
                await until(lambda: any(e["user"] == "UVERA" for e in fake.ephemeral), "viewer refusal")
                assert "Só operators" in fake.ephemeral[-1]["text"] and fake.ephemeral[-1]["thread_ts"] == anchor

                # Socket Mode press: re-run the tie-break; the card loses its buttons, a new one comes.
                await fake.wait_ack(await fake.push("interactive", block_actions("UOSCAR", card, "dispute:rerun")))
                await until(lambda: len(cards(fake)) == 1 and cards(fake)[0].ts != card.ts, "second card")
                assert "oscar chose run the tie-break again" in fake.messages[card.ts].text
                second = copy.deepcopy(cards(fake)[0])

                # HTTP press through the admin API (signed): keep the executor's answer.
                body = urlencode({"payload": json.dumps(block_actions("UALICE", second, "dispute:executor"))})
                response = await client.post("/slack/events", data=body.encode(),
                                             headers=signed_headers(body.encode()))
                assert response.status == 200
                forged = dict(signed_headers(body.encode()), **{"X-Slack-Signature": "v0=" + "0" * 64})
                assert (await client.post("/slack/events", data=body.encode(), headers=forged)).status == 401
                await wait_status(runtime, 1, "completed")
                await until(lambda: any(m.text.startswith("Final answer") and m.thread_ts == anchor
                                        for m in fake.channel_messages("C100")), "final answer in the thread")

                # Pressing again (either card, either path) is answered "already resolved"; no double resume.
                await fake.wait_ack(await fake.push("interactive", block_actions("UOSCAR", second, "dispute:rerun")))
                await until(lambda: any("already resolved: alice chose the executor's answer" in e["text"]
                                        for e in fake.ephemeral), "already resolved")
                (sub,) = await rows(runtime, Subtask)
                assert (sub.validation or {})["decision"] == {"chosen": "executor", "by": "alice"}
                assert str(sub.status) == "completed"
                jobs = [c for c in lmstudio.calls("/v1/chat/completions") if "ALTERNATIVE:" in json.dumps(c.body)]
                assert not jobs  # no third model: both tie-breaks were inconclusive without a judge call

                # A reply in the thread (no mention) continues the conversation there.
                await fake.wait_ack(await fake.push("events_api", thread_reply("UOSCAR", anchor, "Why not Sydney?", 1)))
                await until(lambda: any("About “Why not Sydney?”" in m.text and m.thread_ts == anchor
                                        for m in fake.channel_messages("C100")), "follow-up answer")
                # A stranger's reply is refused; a reply in a thread that is not a task's is ignored.
                await fake.wait_ack(await fake.push("events_api", thread_reply("UNOBODY", anchor, "hi", 2)))
                await until(lambda: any("don't know you" in m.text for m in fake.channel_messages("C100")),
                            "stranger refused")
                await platform.wait_idle()
                await threads.wait_idle()
                before = len(fake.calls("chat.postMessage"))
                await fake.wait_ack(await fake.push("events_api", thread_reply("UOSCAR", "1.000001", "hello", 3)))
                await platform.wait_idle()
                await threads.wait_idle()
                assert len(fake.calls("chat.postMessage")) == before
                prompt = next(p for p in llm_prompts(lmstudio) if "Why not Sydney?" in p)
                assert "Capital of Australia?" in prompt and (sub.result or "") in prompt
        finally:
            await threads.stop()
            await platform.stop()
            await stop(runtime)


async def test_slack_restart_mid_task_keeps_the_thread(migrated_db: str, lmstudio: FakeLMStudio,
                                                       tmp_path: Path) -> None:
    long_answer = " ".join(f"word{i}" for i in range(120)) + " " + PARIS
    # 12 s of stream before the stop (a loaded CI machine once finished 3.6 s of it first), a fast one after.
    script_agree(lmstudio, answer=long_answer, token_delay_s=0.1)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    await add_people(runtime)
    dispatcher, threads = dispatcher_for(runtime)
    async with FakeSlack(streaming_supported=False) as fake:
        platform = SlackPlatform(settings=slack_settings(fake), sink=dispatcher.handle_event)
        await platform.start()
        await fake.wait_ack(await fake.push("slash_commands", slash("UOSCAR", "What is the capital of France?")))
        await until(lambda: any("word3" in m.text for m in fake.channel_messages("C100")), "streaming began")
        anchor = next(m.thread_ts for m in fake.channel_messages("C100") if "word3" in m.text)
        # The daemon stops mid-stream: the job is handed back with its checkpoint.
        assert runtime.worker is not None
        await runtime.worker.stop(drain_timeout_s=0.05)
        await threads.stop()
        await platform.stop()
        await stop(runtime)
        assert await _status_on(migrated_db, 1) != "completed"

        script_agree(lmstudio, answer=long_answer, token_delay_s=0.01)
        runtime = await start_engine(migrated_db, lmstudio, tmp_path)
        dispatcher, threads = dispatcher_for(runtime)
        platform = SlackPlatform(settings=slack_settings(fake), sink=dispatcher.handle_event)
        await platform.start()
        try:
            assert await threads.resume([platform]) == 1
            await wait_status(runtime, 1, "completed")
            await until(lambda: any(m.text.startswith("Final answer") for m in fake.channel_messages("C100")),
                        "final answer")
            final = next(m for m in fake.channel_messages("C100") if m.text.startswith("Final answer"))
            assert final.thread_ts == anchor  # the original thread
            assert PARIS in final.text
            assert any("restarted" in m.text and m.thread_ts == anchor for m in fake.channel_messages("C100"))
            await threads.wait_idle()
            assert await threads.resume([platform]) == 0  # delivered: nothing left to follow
            messages = await rows(runtime, ChatMessage)
            assert [str(m.role) for m in messages] == ["user", "assistant"]
        finally:
            await threads.stop()
            await platform.stop()
            await stop(runtime)


async def _status_on(db_url: str, task_id: int) -> str:
    from bot.db.engine import create_engine, session_factory

    engine = create_engine(db_url)
    try:
        async with session_factory(engine)() as session:
            task = await session.get(Task, task_id)
            return str(task.status) if task else "missing"
    finally:
        await engine.dispose()


# -- Discord ---------------------------------------------------------------------------------------
async def test_discord_dispute_gateway_and_http_then_follow_up(migrated_db: str, lmstudio: FakeLMStudio,
                                                               tmp_path: Path) -> None:
    script_dispute(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path, tie_policy="escalate")
    await add_people(runtime)
    dispatcher, threads = dispatcher_for(runtime)
    async with FakeDiscord() as fake:
        settings = DiscordSettings(bot_token=SecretStr(fake.bot_token), api_base_url=fake.api_url,
                                   public_key=PUBLIC_KEY_HEX, application_id=APPLICATION_ID,
                                   message_content_intent=True)
        platform = DiscordPlatform(settings=settings, sink=dispatcher.handle_event,
                                   registry=dispatcher.registry, guild_ready_timeout_s=0.05)
        await platform.start()
        try:
            await fake.dispatch_interaction(user_id="1002", name="task", guild_id="600000000000000001",
                                            options=[{"type": 3, "name": "request", "value": "Capital of Australia?"}])
            await until(lambda: bool(fake.threads), "task thread")
            thread_id = fake.threads[0]["id"]

            def open_cards() -> list[Any]:
                return [m for m in fake.channel_messages(thread_id)
                        if any(row["components"] for row in m.components)]

            await until(lambda: len(open_cards()) == 1, "dispute card with buttons")
            (card,) = open_cards()
            custom = {b["custom_id"].split("|")[0]: b["custom_id"] for b in card.components[0]["components"]}
            assert set(custom) == {"dispute:executor", "dispute:validator", "dispute:rerun"}

            # Viewer over the gateway: deferred, then an ephemeral refusal.
            _, token = await fake.dispatch_component(user_id="1003", custom_id=custom["dispute:validator"],
                                                     message_id=card.id)
            await until(lambda: bool(fake.ephemeral_for(token)), "ephemeral refusal")
            assert "Só operators" in fake.ephemeral_for(token)[0]

            # Operator over the signed HTTP endpoint: keep the validator's answer.
            payload = fake.component_payload(user_id="1002", custom_id=custom["dispute:validator"], message_id=card.id)
            body = json.dumps(payload).encode()
            assert (await platform.handle_http(body, dict(signed(body), **{"X-Signature-Ed25519": "00" * 64})))[0] \
                == 401
            status, _, answer = await platform.handle_http(body, signed(body))
            assert (status, json.loads(answer)) == (200, {"type": 6})
            await wait_status(runtime, 1, "completed")
            await until(lambda: any(m.content.startswith("Final answer") for m in fake.channel_messages(thread_id)),
                        "final answer in the thread")
            await until(lambda: not open_cards(), "buttons removed")
            assert "oscar chose the validator's answer" in json.dumps(fake.messages[card.id].embeds)

            # Pressed again over the gateway: already resolved, nothing resumes twice.
            _, token = await fake.dispatch_component(user_id="1001", custom_id=custom["dispute:executor"],
                                                     message_id=card.id)
            await until(lambda: bool(fake.ephemeral_for(token)), "already resolved")
            assert "already resolved: oscar chose the validator's answer" in fake.ephemeral_for(token)[0]

            # A message in the thread continues the conversation; the bot's own messages are never taken.
            await fake.dispatch_message(channel_id=thread_id, user_id="1002", content="Why not Sydney?")
            await until(lambda: any("About “Why not Sydney?”" in m.content for m in fake.channel_messages(thread_id)),
                        "follow-up answer in the thread")
            await fake.dispatch_message(channel_id=thread_id, user_id="555", content="me too")
            await until(lambda: any("don't know you" in m.content for m in fake.channel_messages(thread_id)),
                        "stranger refused")
            await platform.wait_idle()
            await threads.wait_idle()
            before = len(fake.calls("POST"))
            await fake.dispatch_message(channel_id="700000000000000555", user_id="1002", content="chatter")
            await platform.wait_idle()
            assert len(fake.calls("POST")) == before  # not a task thread: ignored
            conversation = (await rows(runtime, ChatConversation))[0]
            assert (conversation.platform, conversation.channel_id) == ("discord", thread_id)
            assert conversation.thread_id == ""
            roles = [str(m.role) for m in await rows(runtime, ChatMessage)]
            assert roles == ["user", "assistant", "user", "assistant"]
        finally:
            await threads.stop()
            await platform.stop()
            await stop(runtime)
