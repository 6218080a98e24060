"""/task, /ask and /tasks: the engine from chat, with each task's work shown in its own thread.

`/task <request>` answers at once with the task's number and opens a thread where the plan, each
subtask's streamed output, each verdict (validator, score, divergence, issues), tie-breaks and
the final answer appear as the engine publishes them; a disputed step shows both positions, with
buttons when a person must decide. `/ask <question>` is one cross-validated answer without
planning, streamed into the reply itself. What happens later in a task's thread (follow-ups,
button presses, following it again after a restart) is `bot.commands.threads`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.commands.errors import CommandError, NotFoundError
from bot.commands.registry import CommandContext, CommandRegistry, Param, Reply
from bot.db.models import AiModel, Subtask, Task, UserRole
from bot.db.models.enums import TaskStatus
from bot.engine.orchestrator import Engine
from bot.events import Event, EventBus
from bot.logs import get_logger
from bot.platforms.events import Card, CardAction, Conversation
from bot.platforms.i18n import translate
from bot.platforms.streaming import StreamRenderer

if TYPE_CHECKING:
    from bot.commands.threads import TaskThreads

log = get_logger(__name__)
MAX_REQUEST_CHARS = 8000
FOLLOW_LIMIT_S = 6 * 3600.0
# After this long without an event, a follower reads the task's row: a task run by a daemon whose
# events never came (relay off, or that daemon killed before it relayed them) still ends here.
FOLLOW_CHECK_S = 5.0
# A row that has ended may be ahead of its last events (published just after the commit, or relayed
# up to ~0.4 s later): they are waited for this long, since they say more than the row does.
ENDING_GRACE_S = 1.0
_ENDINGS = {TaskStatus.COMPLETED: "task.done", TaskStatus.FAILED: "task.failed",
            TaskStatus.CANCELLED: "task.cancelled"}


def register_engine_commands(registry: CommandRegistry, engine: Engine | None, bus: EventBus | None,
                             threads: TaskThreads | None = None) -> None:
    """Add the commands that need the engine (the composition root calls this).

    `orchestrator discord sync` registers them with no engine, only to publish their names and
    arguments; run there, each says the engine is not running in that process.
    """

    def running() -> tuple[Engine, EventBus]:
        if engine is None or bus is None:
            raise CommandError("engine.not_running")
        return engine, bus

    async def task_command(ctx: CommandContext) -> Reply:
        """Create a task and run it: the plan, each step, each verdict and the answer go to its thread."""
        engine, bus = running()
        if threads is None:
            raise CommandError("engine.not_running")
        request = str(ctx.args["request"]).strip()
        subscription = bus.subscribe(topics={"task"}, maxsize=50_000)
        try:
            submitted = await engine.submit(
                title=request[:120], description=request if len(request) > 120 else "",
                user_id=ctx.principal.user_id, priority=int(ctx.args["priority"] or 0),
                origin={"platform": ctx.place.platform, "channel_id": ctx.place.channel_id,
                        "thread_id": ctx.place.thread_id},
            )
        except BaseException:
            subscription.close()
            raise
        await open_task_thread(ctx, threads=threads, subscription=subscription, task_id=submitted.task_id,
                               label=request, request=request)
        return None  # the reply was posted above, as the thread's anchor

    async def ask_command(ctx: CommandContext) -> Reply:
        """Ask one question: one model answers, a different one checks it, the verdict follows."""
        engine, bus = running()
        question = str(ctx.args["question"]).strip()
        with bus.subscribe(topics={"task"}, maxsize=50_000) as subscription:
            submitted = await engine.submit(title=question[:120], description=question if len(question) > 120
                                            else "", user_id=ctx.principal.user_id, single_step=True,
                                            origin={"platform": ctx.place.platform, "channel_id": ctx.place.channel_id})
            await follow_task(conversation=ctx.conversation, subscription=subscription, engine=engine,
                              task_id=submitted.task_id, language=ctx.language, show_plan=False, show_final=False)
        return None  # the answer and its verdict were streamed into the conversation

    async def tasks_list(ctx: CommandContext) -> str:
        """The most recent tasks and their state."""
        async with ctx.services.session_factory() as session:
            rows = (await session.scalars(select(Task).order_by(Task.id.desc()).limit(ctx.args["limit"]))).all()
        if not rows:
            return translate("tasks.none", ctx.language)
        return "\n".join(f"#{t.id} [{t.status}] {t.title}" for t in rows)

    async def tasks_show(ctx: CommandContext) -> str:
        """One task: its subtasks with executor, validator, score and divergence, and the answer."""
        async with ctx.services.session_factory() as session:
            task = await session.get(Task, ctx.args["id"])
            if task is None:
                raise NotFoundError(translate("tasks.not_found", ctx.language, id=ctx.args["id"]))
            subtasks = (await session.scalars(select(Subtask).where(Subtask.task_id == task.id)
                                              .order_by(Subtask.seq))).all()
        lines = [f"#{task.id} [{task.status}] {task.title}"]
        for sub in subtasks:
            divergence = "-" if sub.divergence_pct is None else f"{sub.divergence_pct:.0f}%"
            score = "-" if sub.validation_score is None else f"{sub.validation_score:.0f}"
            lines.append(f"  {sub.seq}. [{sub.status}] {sub.title} — score {score}, divergence {divergence}")
        if task.result:
            lines += ["", task.result]
        if task.error:
            lines += ["", task.error]
        return "\n".join(lines)

    async def tasks_cancel(ctx: CommandContext) -> str:
        """Cancel a task's queued and running work."""
        engine, _bus = running()
        cancelled = await engine.cancel(ctx.args["id"])
        key = "tasks.cancelled" if cancelled else "tasks.already_ended"
        return translate(key, ctx.language, id=ctx.args["id"])

    registry.add("task", task_command, role=UserRole.OPERATOR, params=[
        Param("request", kind="text", max_length=MAX_REQUEST_CHARS),
        Param("priority", kind="int", option=True, required=False, default=0, minimum=-100, maximum=100),
    ])
    registry.add("ask", ask_command, role=UserRole.OPERATOR,
                 params=[Param("question", kind="text", max_length=MAX_REQUEST_CHARS)])
    registry.add("tasks list", tasks_list, role=UserRole.VIEWER, params=[
        Param("limit", kind="int", option=True, required=False, default=10, minimum=1, maximum=50)])
    registry.add("tasks show", tasks_show, role=UserRole.VIEWER, params=[Param("id", kind="int", minimum=1)])
    registry.add("tasks cancel", tasks_cancel, role=UserRole.OPERATOR, params=[Param("id", kind="int", minimum=1)])
    registry.set_default("tasks", "list")


async def open_task_thread(ctx: CommandContext, *, threads: Any, subscription: Any, task_id: int, label: str,
                           request: str) -> None:
    """The anchor reply, the task's thread and its follower: what /task and /workflows run share.

    The thread is stored before it is followed, so a restart from then on still renders into it;
    on any failure the event subscription is closed instead of leaking.
    """
    title = f"#{task_id} {label[:80]}"
    try:
        anchor = await ctx.conversation.say(translate("task.created", ctx.language, id=task_id, title=label[:120]))
        thread = await ctx.conversation.open_thread(title=title, anchor=anchor)
        await threads.register(task_id=task_id, thread=thread, principal=ctx.principal, sender=ctx.sender,
                               request=request, title=title, language=ctx.language)
    except BaseException:
        subscription.close()
        raise
    threads.follow(task_id=task_id, conversation=thread, subscription=subscription, language=ctx.language)


async def follow_task(*, conversation: Conversation, subscription: Any, engine: Engine, task_id: int,
                      language: str, show_plan: bool = True, show_final: bool = True,
                      check_every_s: float = FOLLOW_CHECK_S) -> Event | None:
    """Render one task's events into a conversation until the task ends (closing the subscription).

    Returns the event that ended it (task.done / task.failed / task.cancelled), None if it outlived
    the follow limit.
    """
    renderers: dict[int, StreamRenderer] = {}
    sessions = engine.sessions
    streamed = False
    try:
        async with asyncio.timeout(FOLLOW_LIMIT_S):
            while True:
                event = await _next_event(subscription, sessions, task_id, every_s=check_every_s)
                payload = event.payload
                subtask_id = payload.get("subtask_id")
                if event.kind == "task.planned" and show_plan:
                    steps = "\n".join(f"{s['id']}. {s['title']}" for s in payload.get("subtasks", []))
                    await conversation.say(translate("task.plan", language, planner=payload.get("planner"),
                                                     steps=steps))
                elif event.kind == "subtask.started" and subtask_id is not None:
                    if show_plan:
                        async with sessions() as session:
                            sub = await session.get(Subtask, subtask_id)
                        if sub is not None:
                            await conversation.say(f"▶ {sub.seq}. {sub.title}")
                    renderers[subtask_id] = StreamRenderer(conversation, language=language,
                                                           filename=f"task-{task_id}-{subtask_id}.md")
                elif event.kind == "subtask.token" and subtask_id in renderers:
                    renderers[subtask_id].feed(str(payload.get("text", "")))
                    streamed = True
                elif event.kind == "subtask.verdict":
                    await _finish(renderers, subtask_id)
                    issues = "".join(f"\n • {issue}" for issue in payload.get("issues", [])[:8])
                    await conversation.say(translate(
                        "task.verdict", language, validator=payload.get("validator"), score=payload.get("score"),
                        decision=payload.get("decision"), divergence=payload.get("divergence_pct"),
                    ) + issues)
                elif event.kind == "subtask.stopped":
                    await conversation.say(translate("task.stopped", language, reason=payload.get("reason")))
                elif event.kind == "subtask.suspect":
                    await _finish(renderers, subtask_id)
                    reasons = "".join(f"\n • {reason}" for reason in payload.get("reasons", [])[:5])
                    handled = str(payload.get("handled_by") or "none")
                    await conversation.say(translate("task.suspect", language, confidence=payload.get("confidence"),
                                                     reasons=reasons, next=translate(f"task.suspect.{handled}",
                                                                                     language)))
                elif event.kind == "subtask.recovered":
                    kept = "retry" if payload.get("kept") == "retry" else "original"
                    await conversation.say(translate(f"task.recovered.{kept}", language, model=payload.get("model"),
                                                     retry=payload.get("retry_confidence"),
                                                     original=payload.get("original_confidence")))
                elif event.kind == "subtask.done":
                    await _finish(renderers, subtask_id)
                    if payload.get("validation") == "unvalidated":
                        await conversation.say(translate("task.unvalidated", language))
                    await _show_dispute(conversation, sessions, subtask_id, language)
                elif event.kind == "subtask.decided":
                    chosen = translate(f"dispute.choice.{payload.get('chosen')}", language)
                    await conversation.say(translate("dispute.decided", language, who=payload.get("by") or "?",
                                                     choice=chosen))
                elif event.kind in ("task.done", "task.failed", "task.cancelled"):
                    for open_id in list(renderers):
                        await _finish(renderers, open_id)
                    # An ending read from the row after the stream never came: the answer was
                    # not shown, so it is shown now even where the stream usually shows it.
                    await render_ending(conversation, task_id=task_id, kind=event.kind, payload=payload,
                                        language=language, show_final=show_final or not streamed)
                    ended: Event = event
                    return ended
    except TimeoutError:
        log.warning("stopped following a long task", task_id=task_id)
    finally:
        subscription.close()
        for key in list(renderers):
            with contextlib.suppress(Exception):  # best effort on the way out; the task itself is unaffected
                await _finish(renderers, key)
    return None


def ending_of(task: Task | None) -> Event | None:
    """The ending event a finished task's row stands for; None while it is not finished."""
    if task is None or task.status not in _ENDINGS:
        return None
    kind = _ENDINGS[task.status]
    payload = {"result": task.result or ""} if kind == "task.done" else {"error": task.error}
    return Event(topic="task", kind=kind, task_id=task.id, payload=payload)


async def _next_event(subscription: Any, sessions: Any, task_id: int, *, every_s: float = FOLLOW_CHECK_S) -> Event:
    """The task's next event; after `every_s` without one, the task's ending if its row has one.

    Silence is counted for this task only: on a busy daemon other tasks' events never stop, and
    they must not keep a follower from noticing that its own task ended without a word.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + every_s
    while True:
        event = await _event_of(subscription, task_id, deadline)
        if event is not None:
            return event
        async with sessions() as session:
            ended = ending_of(await session.get(Task, task_id, populate_existing=True))
        if ended is not None:
            late = await _event_of(subscription, task_id, loop.time() + ENDING_GRACE_S)
            return late if late is not None else ended
        deadline = loop.time() + every_s


async def _event_of(subscription: Any, task_id: int, deadline: float) -> Event | None:
    """The next event of `task_id` before `deadline` (loop time), None if none came."""
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                event: Event = await subscription.get()
                if event.task_id == task_id:
                    return event
    except TimeoutError:
        return None


async def render_ending(conversation: Conversation, *, task_id: int, kind: str, payload: Mapping[str, Any],
                        language: str, show_final: bool) -> None:
    """The final answer (streamed in as many messages as it needs), or why the task ended."""
    if kind == "task.done":
        if show_final:
            final = StreamRenderer(conversation, language=language, filename=f"task-{task_id}.md")
            final.feed(translate("task.final", language) + "\n" + str(payload.get("result", "")))
            await final.finish()
        return
    await conversation.say(translate("task.ended", language, id=task_id, reason=payload.get("error") or kind))


async def _show_dispute(conversation: Conversation, sessions: Any, subtask_id: Any, language: str) -> None:
    """After a tie-break: both positions, and the buttons when a person must decide."""
    if subtask_id is None:
        return
    async with sessions() as session:
        subtask = await session.get(Subtask, subtask_id)
        if subtask is None or not (subtask.validation or {}).get("tiebreak"):
            return
        card = await dispute_card(session, subtask, language=language,
                                  with_buttons=bool((subtask.validation or {}).get("needs_decision")))
    await conversation.say(card.as_text(), card=card)


async def dispute_card(session: AsyncSession, subtask: Subtask, *, language: str, with_buttons: bool) -> Card:
    """A disputed step: the executor's and the validator's answers side by side, the tie-break's outcome."""
    from bot.commands.threads import DISPUTE_PREFIX, dispute_value

    validation = dict(subtask.validation or {})
    tiebreak = dict(validation.get("tiebreak") or {})
    executor = await session.get(AiModel, subtask.executor_model_id) if subtask.executor_model_id else None
    divergence = (validation.get("divergence") or {}).get("pct", subtask.divergence_pct)
    if validation.get("needs_decision"):
        body = translate("task.tie_waiting", language)
    else:
        outcome = str(tiebreak.get("outcome") or "tie")
        body = translate("dispute.decided_by_judge", language, divergence=divergence,
                         outcome=translate(f"dispute.choice.{outcome}", language))
    if tiebreak.get("reason"):
        body += f"\n_{tiebreak['reason']}_"
    fields = (
        (translate("dispute.executor", language, model=executor.model_key if executor else "?"),
         _excerpt(validation.get("executor_answer") or subtask.result)),
        (translate("dispute.validator", language, model=validation.get("validator") or "?"),
         _excerpt(validation.get("reference_answer"))),
    )
    actions: tuple[CardAction, ...] = ()
    if with_buttons:
        value = dispute_value(subtask.id, len(validation.get("tiebreak_history") or []))
        actions = (
            CardAction(f"{DISPUTE_PREFIX}executor", translate("dispute.accept_executor", language), value, "primary"),
            CardAction(f"{DISPUTE_PREFIX}validator", translate("dispute.accept_validator", language), value),
            CardAction(f"{DISPUTE_PREFIX}rerun", translate("dispute.rerun", language), value),
        )
    return Card(title=translate("dispute.title", language, seq=subtask.seq, title=subtask.title[:120]), body=body,
                fields=fields, severity="warning", actions=actions)


def _excerpt(text: Any, limit: int = 900) -> str:
    value = str(text or "").strip() or "-"
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


async def _finish(renderers: dict[int, StreamRenderer], subtask_id: Any) -> None:
    renderer = renderers.pop(subtask_id, None) if subtask_id is not None else None
    if renderer is not None:
        await renderer.finish()
