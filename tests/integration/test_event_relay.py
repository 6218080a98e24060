"""Task events between daemons sharing one database (bot/engine/relay.py), on SQLite and MariaDB.

Two engine runtimes on one database stand for two daemons: one takes the chat command and follows
the task, the other claims and runs it. The follower must see the run as if it were local, and a
follower whose events never come must still end with the answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Table, func, insert, select, text

from bot.db.base import utcnow
from bot.db.engine import create_engine, session_factory
from bot.db.models import TaskEvent
from bot.engine.queue import JobQueue
from bot.engine.relay import MAX_PAYLOAD_CHARS, EventRelay, event_rows
from bot.engine.runtime import EngineRuntime
from bot.events import Event, EventBus, Subscription
from bot.settings import load_settings
from tests.fakes import FakeLMStudio
from tests.integration.test_chat_engine import wait_for_text
from tests.integration.test_engine import PARIS, lmstudio, start_engine, stop, verdict

__all__ = ["lmstudio"]
EVENTS = cast(Table, TaskEvent.__table__)


async def daemon(db_url: str, fake: FakeLMStudio, tmp_path: Path, name: str, *, worker: bool,
                 relay: str = "on") -> EngineRuntime:
    """One daemon's engine: its own bus, pool and worker id, on the shared database."""
    return await start_engine(db_url, fake, tmp_path, name=name, run_worker=worker, relay_events=relay)


def script_two_models(fake: FakeLMStudio) -> None:
    for model, family in (("qwen2.5-7b-instruct", "qwen"), ("llama-3.2-3b-instruct", "llama")):
        fake.script(model, answer=PARIS, family=family, structured={"Verdict": verdict(91, "approve")})


async def collect_until_done(subscription: Any, task_id: int, *, timeout: float = 60) -> list[Event]:
    seen: list[Event] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await subscription.get()
            if event.task_id == task_id:
                seen.append(event)
                if event.kind in ("task.done", "task.failed", "task.cancelled"):
                    return seen


async def test_a_task_run_by_another_daemon_streams_to_the_one_that_follows_it(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    script_two_models(lmstudio)
    front = await daemon(migrated_db, lmstudio, tmp_path, "front", worker=False)
    runner = await daemon(migrated_db, lmstudio, tmp_path, "runner", worker=True)
    assert front.bus is not None and runner.bus is not None and front.engine is not None
    assert front.relay is not None and runner.relay is not None and runner.worker is not None
    watched = front.bus.subscribe(topics={"task"}, maxsize=10_000)
    own = runner.bus.subscribe(topics={"task"}, maxsize=10_000)
    try:
        submitted = await front.engine.submit(title="What is the capital of France?", single_step=True)
        events = await collect_until_done(watched, submitted.task_id)
        kinds = [e.kind for e in events]
        for kind in ("subtask.started", "subtask.token", "subtask.verdict", "subtask.done", "task.done"):
            assert kind in kinds, kinds
        assert kinds.index("subtask.started") < kinds.index("subtask.verdict") < kinds.index("task.done")
        ran_there = [e for e in events if e.kind != "task.created"]
        assert {e.origin for e in ran_there} == {runner.worker.worker_id}
        # Streamed text arrives merged per flush, and whole.
        text = "".join(str(e.payload["text"]) for e in events if e.kind == "subtask.token")
        assert text == PARIS
        assert events[-1].payload["result"] == PARIS
        verdict_event = next(e for e in events if e.kind == "subtask.verdict")
        assert verdict_event.payload["score"] == 91
        assert verdict_event.as_json()["origin"] == runner.worker.worker_id
        # Nobody hears their own events twice: the front's task.created is not echoed back to it,
        # and the runner's bus holds only its own events (no origin), each once.
        assert [e.kind for e in events].count("task.created") == 1
        assert front.bus.relayed_total >= len(ran_there)  # what /metrics reports as relayed
        assert next(e for e in events if e.kind == "task.created").origin is None
        await asyncio.sleep(3 * runner.relay.poll_interval_s + runner.relay.flush_interval_s)
        heard = own.drain()
        assert {e.origin for e in heard} == {None, front.relay.origin}
        assert [e.kind for e in heard if e.origin is not None] == ["task.created"]
        assert sum(1 for e in heard if e.kind == "task.done") == 1
        # Written once each: every row of the table is one relayed event, none written twice.
        async with front.sessions() as session:
            rows = (await session.execute(select(EVENTS.c.origin, EVENTS.c.kind, func.count())
                                          .group_by(EVENTS.c.origin, EVENTS.c.kind))).all()
        counts = {(origin, kind): n for origin, kind, n in rows}
        assert counts[(runner.worker.worker_id, "task.done")] == 1
        assert counts[(front.relay.origin, "task.created")] == 1
    finally:
        watched.close()
        own.close()
        await stop(runner)
        await stop(front)


async def test_a_follower_ends_with_the_answer_when_no_event_comes(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    """Relay off (or the running daemon killed before it relayed): the follower reads the row."""
    from bot.commands.engine_commands import follow_task
    from bot.platforms.console import ConsolePlatform

    script_two_models(lmstudio)
    front = await daemon(migrated_db, lmstudio, tmp_path, "front", worker=False, relay="off")
    runner = await daemon(migrated_db, lmstudio, tmp_path, "runner", worker=True, relay="off")
    assert front.bus is not None and front.engine is not None and front.relay is None
    console = ConsolePlatform(sink=lambda _event: asyncio.sleep(0), user_id="u1", files_dir=tmp_path / "files")
    await console.start()
    subscription = front.bus.subscribe(topics={"task"}, maxsize=10_000)
    try:
        submitted = await front.engine.submit(title="What is the capital of France?", single_step=True)
        conversation = console.conversation(console.place)
        ending = await follow_task(conversation=conversation, subscription=subscription, engine=front.engine,
                                   task_id=submitted.task_id, language="en", show_plan=False, show_final=False,
                                   check_every_s=0.2)
        assert ending is not None and ending.kind == "task.done"
        # /ask shows the answer through its stream; none came here, so the ending shows it.
        await wait_for_text(console, PARIS, timeout=10)
    finally:
        subscription.close()
        await console.stop()
        await stop(runner)
        await stop(front)


async def test_a_finished_row_waits_briefly_for_the_events_still_on_their_way(migrated_db: str) -> None:
    """The row can be ahead of its last events: those say more (an "unvalidated" note), so they win;
    and silence is this task's, not the bus's."""
    from bot.commands.engine_commands import ENDING_GRACE_S, _next_event
    from bot.db.models import Task
    from bot.db.models.enums import TaskStatus

    db = create_engine(migrated_db)
    bus = EventBus()
    subscription = bus.subscribe(topics={"task"})
    try:
        sessions = session_factory(db)
        async with sessions() as session, session.begin():
            task = Task(title="t", status=TaskStatus.COMPLETED, result="done")
            session.add(task)
        late = Event(topic="task", kind="subtask.done", task_id=task.id, payload={"validation": "unvalidated"})
        asyncio.get_running_loop().call_later(0.2 + ENDING_GRACE_S / 2, bus.publish, late)
        assert (await _next_event(subscription, sessions, task.id, every_s=0.2)).kind == "subtask.done"
        # Nothing more of this task comes, while other tasks' events never stop (a busy daemon):
        # the row's ending, one grace later.
        async def other_tasks() -> None:
            while True:
                bus.publish(Event(topic="task", kind="subtask.token", task_id=task.id + 1, payload={"text": "x"}))
                await asyncio.sleep(0.02)

        noise = asyncio.create_task(other_tasks())
        try:
            ending = await asyncio.wait_for(_next_event(subscription, sessions, task.id, every_s=0.2), 10)
        finally:
            noise.cancel()
        assert ending.kind == "task.done" and ending.payload == {"result": "done"}
    finally:
        subscription.close()
        await db.dispose()


# -- the table, on both backends -------------------------------------------------------------------
@pytest.fixture
async def relay_parts(migrated_db: str) -> AsyncIterator[tuple[Any, JobQueue]]:
    db = create_engine(migrated_db)
    try:
        yield db, JobQueue(db)
    finally:
        await db.dispose()


@asynccontextmanager
async def running_relay(db: Any, queue: JobQueue, **options: Any) -> AsyncIterator[tuple[EventRelay, Subscription]]:
    """A started relay named "here" and a subscription to what it publishes."""
    bus = EventBus()
    seen = bus.subscribe(topics={"task"})
    relay = EventRelay(bus=bus, db_engine=db, queue=queue, origin="here", **options)
    await relay.start()
    try:
        yield relay, seen
    finally:
        await relay.stop()
        seen.close()


async def _insert(db: Any, **row: Any) -> None:
    async with db.begin() as connection:
        await connection.execute(insert(EVENTS), {"origin": "elsewhere", "task_id": 1, "kind": "subtask.done",
                                                  "payload": {}, "created_at": utcnow(), **row})


async def test_an_id_that_commits_late_is_still_delivered_once(relay_parts: tuple[Any, JobQueue]) -> None:
    db, queue = relay_parts
    async with running_relay(db, queue, gap_wait_s=30) as (relay, seen):
        base = relay._last_id
        await _insert(db, id=base + 3, payload={"n": 3})  # ids base+1, base+2 are still "in flight"
        await relay.poll()
        await _insert(db, id=base + 1, payload={"n": 1})
        await relay.poll()
        await relay.poll()
        assert [e.payload["n"] for e in seen.drain()] == [3, 1]
        await _insert(db, id=base + 4, payload={"n": 4}, origin="here")  # our own row: not published here
        await relay.poll()
        assert seen.drain() == []


async def test_a_row_that_is_not_json_is_skipped_and_the_next_delivered(relay_parts: tuple[Any, JobQueue]) -> None:
    db, queue = relay_parts
    async with running_relay(db, queue) as (relay, seen):
        base = relay._last_id
        # MariaDB's JSON check refuses text that is not JSON; SQLite stores anything.
        broken = "{not json" if db.dialect.name == "sqlite" else '"a string"'
        async with db.begin() as connection:  # bypasses the JSON type, as a hand-written row would
            for row_id, payload in ((base + 1, broken), (base + 2, "[1, 2]"), (base + 3, '{"n": 3}')):
                await connection.execute(
                    text("INSERT INTO task_events (id, origin, task_id, kind, payload, created_at) "
                         "VALUES (:id, 'elsewhere', 1, 'subtask.done', :payload, :at)"),
                    {"id": row_id, "payload": payload, "at": utcnow().replace(tzinfo=None)})
        await relay.poll()
        assert [e.payload for e in seen.drain()] == [{"n": 3}]
        assert relay._last_id == base + 3 and relay._gaps == {}


async def test_gaps_are_forgotten_after_their_wait(relay_parts: tuple[Any, JobQueue]) -> None:
    db, queue = relay_parts
    async with running_relay(db, queue, gap_wait_s=0.05) as (relay, _seen):
        await _insert(db, id=relay._last_id + 5)
        await relay.poll()
        assert len(relay._gaps) == 4
        await asyncio.sleep(0.1)
        await relay.poll()
        assert relay._gaps == {}


async def test_old_rows_are_pruned_and_recent_ones_kept(relay_parts: tuple[Any, JobQueue]) -> None:
    db, queue = relay_parts
    relay = EventRelay(bus=EventBus(), db_engine=db, queue=queue, origin="here", retention_s=60)
    await _insert(db, created_at=utcnow() - timedelta(minutes=5), payload={"old": True})
    await _insert(db, payload={"old": False})
    assert await relay.prune() == 1
    async with db.connect() as connection:
        left = [row.payload for row in await connection.execute(select(EVENTS.c.payload))]
    assert left == [{"old": False}]


async def test_stop_writes_what_is_buffered(relay_parts: tuple[Any, JobQueue]) -> None:
    db, queue = relay_parts
    bus = EventBus()
    relay = EventRelay(bus=bus, db_engine=db, queue=queue, origin="here", flush_interval_s=60)
    await relay.start()
    bus.publish(Event(topic="task", kind="task.done", task_id=7, payload={"result": "ok"}))
    await relay.stop()
    async with db.connect() as connection:
        rows = list(await connection.execute(select(EVENTS.c.origin, EVENTS.c.kind, EVENTS.c.payload)))
    assert [(r.origin, r.kind, r.payload) for r in rows] == [("here", "task.done", {"result": "ok"})]


# -- what is written -----------------------------------------------------------------------------
def _token(task_id: int, subtask_id: int, text: str) -> Event:
    return Event(topic="task", kind="subtask.token", task_id=task_id, payload={"subtask_id": subtask_id, "text": text})


def test_streamed_text_is_merged_per_subtask_without_reordering_a_task() -> None:
    events = [
        _token(1, 10, "Par"), _token(2, 20, "Lyo"), _token(1, 10, "is"),
        Event(topic="task", kind="subtask.verdict", task_id=1, payload={"subtask_id": 10}),
        _token(1, 10, "!"), _token(2, 20, "n"),
    ]
    rows = event_rows(events, origin="o")
    shown = [(r["task_id"], r["kind"], json.loads(r["payload"].text).get("text")) for r in rows]
    assert shown == [(1, "subtask.token", "Paris"), (2, "subtask.token", "Lyon"), (1, "subtask.verdict", None),
                     (1, "subtask.token", "!")]


def test_a_long_stream_is_split_into_rows_under_the_cap() -> None:
    chunk = "x" * 1000
    events = [_token(1, 10, chunk) for _ in range(400)]
    rows = event_rows(events, origin="o")
    texts = [json.loads(r["payload"].text)["text"] for r in rows]
    assert "".join(texts) == chunk * 400  # nothing lost
    assert len(rows) > 1 and all(len(t) <= MAX_PAYLOAD_CHARS // 2 for t in texts)


def test_unwritable_and_relayed_events_are_left_out() -> None:
    events = [
        Event(topic="task", kind="subtask.verdict", task_id=1, payload={"score": float("nan")}),
        Event(topic="task", kind="subtask.done", task_id=1, payload={"huge": "x" * (MAX_PAYLOAD_CHARS + 1)}),
        Event(topic="task", kind="subtask.done", task_id=1, payload={"from": "b"}, origin="daemon-b"),
        Event(topic="task", kind="task.done", task_id=1, payload={"result": "ok", "at": utcnow()}),
    ]
    rows = event_rows(events, origin="o")
    assert [r["kind"] for r in rows] == ["task.done"]
    assert json.loads(rows[0]["payload"].text)["result"] == "ok"  # a datetime is written as text


@pytest.mark.parametrize(("url", "setting", "worker_processes", "worker_only", "expected"), [
    ("sqlite+aiosqlite:///x.db", "auto", 0, False, False),  # one daemon: nobody to relay to
    ("sqlite+aiosqlite:///x.db", "auto", 2, False, True),  # its worker processes run the tasks
    ("sqlite+aiosqlite:///x.db", "auto", 0, True, True),  # a worker: its events matter elsewhere
    ("mysql+aiomysql://root@127.0.0.1/test", "auto", 0, False, True),
    ("mysql+aiomysql://root@127.0.0.1/test", "off", 2, True, False),
    ("sqlite+aiosqlite:///x.db", "on", 0, False, True),
])
async def test_when_events_are_relayed(tmp_path: Path, url: str, setting: str, worker_processes: int,
                                       worker_only: bool, expected: bool) -> None:
    settings = load_settings(environ={"ORCH_DATA_DIR": str(tmp_path)},
                             engine={"relay_events": setting, "worker_processes": worker_processes})
    db = create_engine(url.replace("///x.db", f"///{tmp_path / 'x.db'}"))
    try:
        runtime = EngineRuntime(settings=settings, db_engine=db, sessions=session_factory(db), bus=EventBus(),
                                worker_only=worker_only)
        assert runtime.relays_events() is expected
    finally:
        await db.dispose()
