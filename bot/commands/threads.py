"""A task's thread: follow-up questions, dispute buttons, and following it again after a restart.

A `/task` thread is a `chat_conversations` row (platform, channel, thread id) that the task points
at (`tasks.conversation_id`); the requester's platform ids live in `tasks.origin["requester"]`, so
a restarted daemon can post into the same thread on their behalf. Every exchange is a
`chat_messages` row: the request, the final answer, each follow-up and its answer.

- A message in a task's thread (or the console's `reply <task> <text>`) is a follow-up: it becomes
  a single-step engine task — one model answers, another checks it, like /ask — whose prompt holds
  the request, the task's final answer and the conversation so far; the answer streams into the
  thread.
- A subtask whose tie-break was inconclusive under the "escalate" policy waits for a person: its
  card shows both positions with buttons (keep the executor's, keep the validator's, re-run the
  tie-break). A press calls `Engine.resolve_tie`, which lets exactly one decision through.
- `resume` follows, after a restart, every task that has a thread and has not delivered its ending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.commands.permissions import audit_row
from bot.commands.registry import Principal, role_allows
from bot.db.base import utcnow
from bot.db.models import AuditOutcome, ChatConversation, ChatMessage, MessageRole, Subtask, Task, UserRole
from bot.db.models.enums import SubtaskStatus, TaskStatus
from bot.engine.orchestrator import Engine, EngineError
from bot.events import EventBus
from bot.logs import get_logger
from bot.platforms.base import Platform
from bot.platforms.events import ButtonPress, Conversation, IncomingMessage, Place, Sender
from bot.platforms.i18n import translate

log = get_logger(__name__)

MAX_FOLLOWUP_CHARS = 8000
HISTORY_CHARS = 24_000  # the conversation shown to the model, newest messages first to be dropped last
ANSWER_CHARS = 24_000  # the task's final answer as context
DISPUTE_PREFIX = "dispute:"
CHOICES = ("executor", "validator", "rerun")
TERMINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
RESUME_WINDOW = timedelta(days=1)  # endings not yet delivered are posted for tasks this recent


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """A task thread as stored: its conversation row and the task the thread is about."""

    conversation_id: int
    place: Place
    language: str | None
    task_id: int
    task_status: TaskStatus
    title: str
    description: str
    result: str | None


def place_of(row: ChatConversation) -> Place:
    """The platform place a conversation row stands for ("" thread id: the channel itself)."""
    return Place(row.platform, row.channel_id, row.thread_id or None)


class TaskThreads:
    """Owns every task thread's follower and answers what people do in those threads."""

    def __init__(self, *, engine: Engine, bus: EventBus) -> None:
        self._engine = engine
        self._bus = bus
        self._sessions = engine.sessions
        self._followers: dict[int, asyncio.Task[None]] = {}
        self._decisions: dict[int, asyncio.Lock] = {}

    def install(self, dispatcher: Any) -> None:
        """Take plain messages, thread replies and button presses from the dispatcher."""
        dispatcher.on_message = self.on_message
        dispatcher.on_button = self.on_button
        dispatcher.accepts_message = self.accepts

    async def stop(self) -> None:
        """Stop following (the tasks themselves go on; `resume` picks them up after a restart)."""
        followers = [task for task in self._followers.values() if not task.done()]
        for task in followers:
            task.cancel()
        for task in followers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._followers.clear()

    async def wait_idle(self, limit_s: float = 60.0) -> None:
        """Wait until every follower has ended (tests)."""
        pending = [task for task in self._followers.values() if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=limit_s)

    # -- opening a thread ---------------------------------------------------------------------
    async def register(self, *, task_id: int, thread: Conversation, principal: Principal, sender: Sender,
                       request: str, title: str, language: str) -> None:
        """Record a new task thread: the conversation row, the request as its first message."""
        place = thread.place
        async with self._sessions() as session, session.begin():
            row = await self._conversation_row(session, place)
            if row is None:
                row = ChatConversation(platform=place.platform, channel_id=place.channel_id,
                                       thread_id=place.thread_id or "", user_id=principal.user_id,
                                       title=title[:255], language=language)
                session.add(row)
                await session.flush()
            row.last_message_at = utcnow()
            session.add(ChatMessage(conversation_id=row.id, user_id=principal.user_id, role=MessageRole.USER,
                                    content=request, task_id=task_id))
            task = await session.get(Task, task_id)
            if task is not None:
                task.conversation_id = row.id
                task.origin = {**(task.origin or {}), "requester": _requester(sender)}

    def follow(self, *, task_id: int, conversation: Conversation, subscription: Any, language: str,
               followup: bool = False, resumed: bool = False) -> asyncio.Task[None]:
        """Render a task into its thread in the background (one follower per task)."""
        existing = self._followers.get(task_id)
        if existing is not None and not existing.done():
            subscription.close()
            return existing
        follower = asyncio.create_task(
            self._follow(task_id=task_id, conversation=conversation, subscription=subscription, language=language,
                         followup=followup, resumed=resumed),
            name=f"follow-task-{task_id}",
        )
        self._followers[task_id] = follower
        follower.add_done_callback(lambda done: self._forget(task_id, done))
        return follower

    def _forget(self, task_id: int, done: asyncio.Task[None]) -> None:
        if self._followers.get(task_id) is done:
            del self._followers[task_id]

    async def _follow(self, *, task_id: int, conversation: Conversation, subscription: Any, language: str,
                      followup: bool, resumed: bool) -> None:
        from bot.commands.engine_commands import follow_task

        try:
            if resumed and await self._deliver_if_ended(task_id, conversation, language):
                subscription.close()
                return
            if resumed:
                await conversation.say(translate("task.reattached", language, id=task_id))
            ending = await follow_task(conversation=conversation, subscription=subscription, engine=self._engine,
                                       task_id=task_id, language=language, show_plan=not followup,
                                       show_final=not followup or resumed)
            if ending is not None:
                await self._record_ending(task_id, ending.kind, dict(ending.payload))
        except asyncio.CancelledError:
            raise
        except Exception:  # a follower's boundary: the task itself goes on; its thread is picked up on restart
            log.exception("following a task failed", task_id=task_id)

    # -- restart ------------------------------------------------------------------------------
    async def resume(self, platforms: Iterable[Platform]) -> int:
        """Follow again every task that has a thread on a started platform and has not delivered its ending."""
        by_name = {platform.name: platform for platform in platforms}
        since = utcnow() - RESUME_WINDOW
        async with self._sessions() as session:
            rows = (await session.execute(
                select(Task, ChatConversation)
                .join(ChatConversation, ChatConversation.id == Task.conversation_id)
                .where(Task.status.not_in(list(TERMINAL)) | (Task.finished_at >= since))
                .order_by(Task.id)
            )).all()
            delivered = set((await session.scalars(
                select(ChatMessage.task_id).where(ChatMessage.task_id.in_([task.id for task, _ in rows]),
                                                  ChatMessage.role.in_([MessageRole.ASSISTANT, MessageRole.SYSTEM]))
            )).all()) if rows else set()
        resumed = 0
        for task, row in rows:
            platform = by_name.get(row.platform)
            if platform is None or task.id in delivered or task.id in self._followers:
                continue
            requester = dict((task.origin or {}).get("requester") or {})
            sender = Sender(row.platform, str(requester["user_id"]), team_id=requester.get("team_id")) \
                if requester.get("user_id") else None
            try:
                conversation = platform.conversation(place_of(row), sender)
            except Exception:  # a platform that cannot post now: logged; the next restart tries again
                log.exception("cannot reopen a task thread", task_id=task.id, platform=row.platform)
                continue
            subscription = self._bus.subscribe(topics={"task"}, maxsize=50_000)
            self.follow(task_id=task.id, conversation=conversation, subscription=subscription,
                        language=row.language or "en", followup=bool((task.origin or {}).get("followup_of")),
                        resumed=True)
            resumed += 1
        if resumed:
            log.info("following task threads again after a restart", tasks=resumed)
        return resumed

    async def _deliver_if_ended(self, task_id: int, conversation: Conversation, language: str) -> bool:
        """A task that ended while nobody followed it: post its ending now (once)."""
        from bot.commands.engine_commands import ending_of, render_ending

        async with self._sessions() as session:
            ending = ending_of(await session.get(Task, task_id))
        if ending is None:
            return False
        payload = dict(ending.payload)
        await render_ending(conversation, task_id=task_id, kind=ending.kind, payload=payload, language=language,
                            show_final=True)
        await self._record_ending(task_id, ending.kind, payload)
        return True

    async def _record_ending(self, task_id: int, kind: str, payload: dict[str, Any]) -> None:
        """The final answer (or why it ended) as the thread's message, marking the ending delivered."""
        async with self._sessions() as session, session.begin():
            task = await session.get(Task, task_id)
            if task is None or task.conversation_id is None:
                return
            model_id = None
            if kind == "task.done":
                role, content = MessageRole.ASSISTANT, str(payload.get("result") or task.result or "")
                model_id = await session.scalar(select(Subtask.executor_model_id)
                                                .where(Subtask.task_id == task_id).order_by(Subtask.seq.desc())
                                                .limit(1))
            else:
                role, content = MessageRole.SYSTEM, f"{kind}: {payload.get('error') or ''}".strip()
            session.add(ChatMessage(conversation_id=task.conversation_id, role=role, content=content,
                                    task_id=task_id, model_id=model_id))
            await session.execute(update(ChatConversation).where(ChatConversation.id == task.conversation_id)
                                  .values(last_message_at=utcnow()))

    # -- follow-ups ---------------------------------------------------------------------------
    async def accepts(self, event: IncomingMessage) -> bool:
        """Whether an unaddressed thread reply is in a task's thread (the dispatcher asks)."""
        async with self._sessions() as session:
            return await self._conversation_row(session, event.place) is not None

    async def on_message(self, event: IncomingMessage, conversation: Conversation, principal: Principal) -> None:
        """A message in a task's thread continues its conversation; elsewhere, the pointer to /help."""
        thread = await self._thread_for(event)
        language = principal.language
        if thread is None:
            if event.task_id is not None:
                await conversation.say(translate("followup.no_thread", language, id=event.task_id))
            elif event.addressed:
                await conversation.say(translate("message.use_commands", language))
            return
        target = conversation if conversation.place == thread.place else conversation.at(thread.place)
        text = event.text.strip()
        if not role_allows(principal.role, UserRole.OPERATOR):
            await self._audit(principal, event, "task.followup", AuditOutcome.DENIED, {"task": thread.task_id})
            await target.say_private(translate("followup.denied", language, role=str(principal.role)))
            return
        if not text:
            return
        if len(text) > MAX_FOLLOWUP_CHARS:
            await self._audit(principal, event, "task.followup", AuditOutcome.FAILED,
                              {"task": thread.task_id, "error": "too_long", "length": len(text)})
            await target.say(translate("followup.too_long", language, length=f"{len(text):,}",
                                       limit=f"{MAX_FOLLOWUP_CHARS:,}"))
            return
        if thread.task_status != TaskStatus.COMPLETED:
            await target.say(translate("followup.task_running", language, id=thread.task_id))
            return
        message_id = await self._save_followup(thread, event, principal, text)
        if message_id is None:
            return  # the platform delivered the same message twice: answered already
        history = await self._history(thread.conversation_id, before=message_id)
        subscription = self._bus.subscribe(topics={"task"}, maxsize=50_000)
        try:
            submitted = await self._engine.submit(
                title=f"Follow-up on #{thread.task_id}: {text}"[:120], user_id=principal.user_id,
                description=followup_prompt(thread, history, text), single_step=True,
                conversation_id=thread.conversation_id,
                origin={"platform": thread.place.platform, "channel_id": thread.place.channel_id,
                        "thread_id": thread.place.thread_id, "followup_of": thread.task_id,
                        "requester": _requester(event.sender)},
            )
        except BaseException:
            subscription.close()
            raise
        async with self._sessions() as session, session.begin():
            await session.execute(update(ChatMessage).where(ChatMessage.id == message_id)
                                  .values(task_id=submitted.task_id))
        await self._audit(principal, event, "task.followup", AuditOutcome.SUCCESS,
                          {"task": thread.task_id, "followup_task": submitted.task_id})
        await self.follow(task_id=submitted.task_id, conversation=target, subscription=subscription,
                          language=language, followup=True)

    async def _thread_for(self, event: IncomingMessage) -> ThreadInfo | None:
        async with self._sessions() as session:
            if event.task_id is not None:
                named = await session.get(Task, event.task_id)
                row = await session.get(ChatConversation, named.conversation_id) \
                    if named is not None and named.conversation_id is not None else None
                if row is None or row.platform != event.place.platform:
                    return None
            else:
                row = await self._conversation_row(session, event.place)
                if row is None:
                    return None
            tasks = (await session.scalars(select(Task).where(Task.conversation_id == row.id)
                                           .order_by(Task.id.desc()))).all()
        # The thread is about its most recent task that is not itself a follow-up.
        task = next((t for t in tasks if not (t.origin or {}).get("followup_of")), None)
        if task is None:
            return None
        return ThreadInfo(conversation_id=row.id, place=place_of(row), language=row.language, task_id=task.id,
                          task_status=task.status, title=task.title, description=task.description,
                          result=task.result)

    async def _save_followup(self, thread: ThreadInfo, event: IncomingMessage, principal: Principal,
                             text: str) -> int | None:
        """The person's message, stored before anything runs; None when it was stored before."""
        try:
            async with self._sessions() as session, session.begin():
                message = ChatMessage(conversation_id=thread.conversation_id, user_id=principal.user_id,
                                      role=MessageRole.USER, content=text,
                                      platform_message_id=f"{event.place.platform}:{event.message_id}"[:255])
                session.add(message)
                await session.execute(update(ChatConversation).where(ChatConversation.id == thread.conversation_id)
                                      .values(last_message_at=utcnow()))
                await session.flush()
                return message.id
        except IntegrityError:  # expected: a redelivered message hits the unique (conversation, message id)
            log.info("follow-up delivered twice; answered once", message_id=event.message_id)
            return None

    async def _history(self, conversation_id: int, *, before: int) -> list[tuple[str, str]]:
        """(role, text) of the conversation before message `before`, oldest first, within HISTORY_CHARS."""
        async with self._sessions() as session:
            rows = (await session.execute(
                select(ChatMessage.role, ChatMessage.content).where(ChatMessage.conversation_id == conversation_id,
                                                                   ChatMessage.id < before)
                .order_by(ChatMessage.id.desc()).limit(200))).all()
        kept: list[tuple[str, str]] = []
        used = 0
        for role, content in rows:
            if used + len(content) > HISTORY_CHARS:
                break
            kept.append((str(role), content))
            used += len(content)
        return list(reversed(kept))

    # -- disputes -----------------------------------------------------------------------------
    async def on_button(self, press: ButtonPress, conversation: Conversation, principal: Principal) -> None:
        """A dispute button: operators and admins decide, once; everyone else is told privately."""
        if not press.action_id.startswith(DISPUTE_PREFIX):
            return
        language = principal.language
        choice = press.action_id.removeprefix(DISPUTE_PREFIX)
        subtask_id, round_no = _dispute_value(press.value)
        if choice not in CHOICES or subtask_id is None:
            await conversation.say_private(translate("dispute.gone", language))
            return
        detail = {"subtask": subtask_id, "choice": choice}
        if not role_allows(principal.role, UserRole.OPERATOR):
            await self._audit(principal, press, "task.decide", AuditOutcome.DENIED, detail)
            await conversation.say_private(translate("dispute.denied", language, role=str(principal.role)))
            return
        lock = self._decisions.setdefault(subtask_id, asyncio.Lock())
        async with lock:
            async with self._sessions() as session:
                subtask = await session.get(Subtask, subtask_id)
            validation = dict(subtask.validation or {}) if subtask is not None else {}
            waiting = bool(validation.get("needs_decision")) and subtask is not None \
                and subtask.status == SubtaskStatus.TIEBREAKING \
                and len(validation.get("tiebreak_history") or []) == round_no
            if subtask is None or not waiting:
                await self._audit(principal, press, "task.decide", AuditOutcome.FAILED,
                                  {**detail, "error": "already_resolved"})
                await conversation.say_private(_already(validation, language))
                return
            await self._ensure_following(subtask.task_id, conversation)
            try:
                await self._engine.resolve_tie(subtask_id, choose=choice, decided_by=principal.username)
            except EngineError:  # expected: another process decided between our read and our write
                async with self._sessions() as session:
                    fresh = await session.get(Subtask, subtask_id)
                await conversation.say_private(_already(dict(fresh.validation or {}) if fresh else {}, language))
                return
        await self._audit(principal, press, "task.decide", AuditOutcome.SUCCESS, detail)
        await self._close_card(conversation, press, choice=choice, who=principal.username, language=language)

    async def _ensure_following(self, task_id: int, conversation: Conversation) -> None:
        """A decision resumes the task: make sure its thread is followed (the follower may have timed out)."""
        if task_id in self._followers and not self._followers[task_id].done():
            return
        async with self._sessions() as session:
            task = await session.get(Task, task_id)
            row = await session.get(ChatConversation, task.conversation_id) \
                if task is not None and task.conversation_id is not None else None
        if task is None or row is None:
            return
        subscription = self._bus.subscribe(topics={"task"}, maxsize=50_000)
        self.follow(task_id=task_id, conversation=conversation.at(place_of(row)), subscription=subscription,
                    language=row.language or "en", followup=bool((task.origin or {}).get("followup_of")))

    async def _close_card(self, conversation: Conversation, press: ButtonPress, *, choice: str, who: str,
                          language: str) -> None:
        """The card loses its buttons and says who decided what."""
        from bot.commands.engine_commands import dispute_card

        async with self._sessions() as session:
            subtask_id, _ = _dispute_value(press.value)
            subtask = await session.get(Subtask, subtask_id or 0)
            card = await dispute_card(session, subtask, language=language, with_buttons=False) if subtask else None
        if card is None or not press.message_id:
            return
        decided = translate("dispute.decided", language, who=who,
                            choice=translate(f"dispute.choice.{choice}", language))
        card = card.__class__(title=card.title, body=card.body, fields=card.fields, severity="info",
                              footer=decided)
        try:
            await conversation.message(press.message_id).edit(card.as_text(), card=card)
        except Exception:  # the card is cosmetic: the decision is made and announced in the thread
            log.warning("could not update a dispute card", message_id=press.message_id, exc_info=True)

    async def _audit(self, principal: Principal, event: IncomingMessage | ButtonPress, action: str,
                     outcome: AuditOutcome, detail: dict[str, Any]) -> None:
        async with self._sessions() as session, session.begin():
            session.add(audit_row(principal=principal, sender=event.sender, place=event.place, action=action,
                                  outcome=outcome, detail=detail))

    @staticmethod
    async def _conversation_row(session: AsyncSession, place: Place) -> ChatConversation | None:
        return (await session.scalars(select(ChatConversation).where(
            ChatConversation.platform == place.platform, ChatConversation.channel_id == place.channel_id,
            ChatConversation.thread_id == (place.thread_id or "")))).first()


def followup_prompt(thread: ThreadInfo, history: list[tuple[str, str]], text: str) -> str:
    """What the answering model reads: the request, the task's final answer, the talk since, the question."""
    request = f"{thread.title}\n\n{thread.description}".strip()
    answer = (thread.result or "")[:ANSWER_CHARS]
    talk = "\n\n".join(f"[{role}] {content}" for role, content in history)
    return (f"This continues the conversation about task #{thread.task_id}.\n\n"
            f"ORIGINAL REQUEST:\n{request}\n\nFINAL ANSWER OF THE TASK:\n{answer}\n\n"
            f"CONVERSATION SO FAR (oldest first):\n{talk or '(none)'}\n\n"
            f"NEW MESSAGE FROM THE PERSON:\n{text}\n\n"
            "Answer the new message. Use the final answer and the conversation as context; say so when the "
            "message asks for something they do not support.")


def dispute_value(subtask_id: int, round_no: int) -> str:
    """A dispute button's value: the subtask and which tie-break round it decides."""
    return f"{subtask_id}:{round_no}"


def _dispute_value(value: str) -> tuple[int | None, int]:
    subtask, _, round_text = value.partition(":")
    if not subtask.isdigit() or len(subtask) > 12:
        return None, 0
    return int(subtask), int(round_text) if round_text.isdigit() and len(round_text) < 6 else 0


def _already(validation: dict[str, Any], language: str) -> str:
    decision = validation.get("decision") or {}
    if decision.get("chosen") in CHOICES:
        return translate("dispute.already", language, who=decision.get("by") or "?",
                         choice=translate(f"dispute.choice.{decision['chosen']}", language))
    return translate("dispute.gone", language)


def _requester(sender: Sender) -> dict[str, Any]:
    return {"platform": sender.platform, "user_id": sender.user_id, "team_id": sender.team_id}
