"""The heart: plan a task, execute each subtask, have a different model validate it, break ties.

Everything runs as jobs on the durable queue (bot/engine/queue), so nothing is lost when a model
or the process fails:

    task.plan     planner model → JSON plan (schema-checked; sent back once with the error, then
                  to another planner model) → subtask rows + jobs for the ready ones, in the same
                  transaction that marks the plan job done
    subtask.run   execute (streamed, partial output checkpointed, resumed from it)
                  → result saved → validator writes its own answer without seeing the executor's
                  → validator's verdict on the executor's answer → divergence (bot/engine/divergence)
                  → above the threshold a third model judges A/B twice with positions swapped
                  → subtask row, quality metrics and dependants' jobs in one transaction
    task.finish   the final answer (a writer model merges several results) and the task's status

Each model call is a named step of its job: a step finished before a crash is never run again,
and its stored result is what the resumed attempt sees. Every model interaction goes to
`execution_logs`; every state change is published on the event bus (topic "task").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import Table, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from bot.aio import both
from bot.db.base import utcnow
from bot.db.direct import execute_dml
from bot.db.engine import JSONText, Reads, lazy_reads
from bot.db.models import (
    AiRole,
    ExecutionLog,
    LogLevel,
    Subtask,
    SubtaskStatus,
    Task,
    TaskStatus,
)
from bot.engine import suspicion
from bot.engine.divergence import Divergence, measure_divergence
from bot.engine.embeddings import Embedder
from bot.engine.hallucination import StreamGuard, StreamStatsRecorder
from bot.engine.prompts import (
    PromptCache,
    RolePrompt,
    instructions_for,
    render_template,
    role_for_category,
    role_prompt,
    system_with_instructions,
)
from bot.engine.providers.port import ChatMessage, ChatRequest, ChatResult, ProviderError
from bot.engine.providers.router import Router
from bot.engine.providers.usage import current_work
from bot.engine.quality import Outcome, record_outcomes
from bot.engine.queue import (
    JobContext,
    JobQueue,
    JobSpec,
    PendingWrite,
    PermanentJobError,
    QueueEvent,
    defer_write,
)
from bot.engine.schemas import Judgement, MalformedOutputError, Plan, Verdict, json_schema, parse_output
from bot.engine.selection import Candidate, CandidateCache, Choice, MetricsCache, Selector, load_candidates
from bot.engine.workflows import (
    WorkflowError,
    WorkflowPlan,
    new_workflow_task,
    workflow_plan_for,
    write_workflow_subtasks,
)
from bot.errors import OrchestratorError
from bot.events import Event, EventBus
from bot.logs import get_logger, redact_text
from bot.settings import EngineSettings

log = get_logger(__name__)

KIND_PLAN = "task.plan"
KIND_SUBTASK = "subtask.run"
KIND_FINISH = "task.finish"
KIND_TIEBREAK = "subtask.tiebreak"  # a person asked for the tie-break to run again
TERMINAL_SUBTASK = {SubtaskStatus.COMPLETED, SubtaskStatus.FAILED, SubtaskStatus.SKIPPED, SubtaskStatus.CANCELLED}
MAX_LOGGED_CHARS = 200_000

# Hot-path row writes, as Core statements shared by every job: they ride the job's next durable
# write (JobContext.defer), and a group commit sends each as one executemany for all its jobs.
SUBTASKS = cast(Table, Subtask.__table__)
TASKS = cast(Table, Task.__table__)
# Plain comparisons, not NOT IN: expanding IN parameters cannot be sent with executemany.
_OPEN_SUBTASK = and_(*(SUBTASKS.c.status != status for status in sorted(TERMINAL_SUBTASK)))
_START_SUBTASK = (
    update(SUBTASKS).where(SUBTASKS.c.id == bindparam("b_id"), _OPEN_SUBTASK)
    .values(status=SubtaskStatus.RUNNING, attempts=bindparam("b_attempts"),
            started_at=func.coalesce(SUBTASKS.c.started_at, bindparam("b_now", type_=SUBTASKS.c.started_at.type)))
)
_SAVE_RESULT = (
    update(SUBTASKS).where(SUBTASKS.c.id == bindparam("b_id"), _OPEN_SUBTASK)
    .values(result=bindparam("b_result", type_=SUBTASKS.c.result.type), executor_model_id=bindparam("b_executor"),
            status=SubtaskStatus.VALIDATING)
)
_SET_STATUS = (
    update(SUBTASKS).where(SUBTASKS.c.id == bindparam("b_id"), _OPEN_SUBTASK)
    .values(status=bindparam("b_status", type_=SUBTASKS.c.status.type))
)
_INSERT_LOG = insert(cast(Table, ExecutionLog.__table__))
_INSERT_TASK = insert(TASKS)
_INSERT_SUBTASK = insert(SUBTASKS)
# Hot-path reads as Core statements returning plain rows (no ORM identity map, no flush).
_SIBLINGS_OF = SUBTASKS.alias("siblings")
_SUBTASK_CONTEXT = (
    select(SUBTASKS.c.task_id, SUBTASKS.c.seq, SUBTASKS.c.title, SUBTASKS.c.description, SUBTASKS.c.category,
           SUBTASKS.c.depends_on, SUBTASKS.c.status, SUBTASKS.c.expected_output, SUBTASKS.c.specialized_ai_id,
           TASKS.c.title.label("task_title"), TASKS.c.description.label("task_description"),
           TASKS.c.status.label("task_status"), TASKS.c.conversation_id,
           select(func.count()).select_from(_SIBLINGS_OF).where(_SIBLINGS_OF.c.task_id == SUBTASKS.c.task_id)
           .scalar_subquery().label("subtasks"))
    .join(TASKS, TASKS.c.id == SUBTASKS.c.task_id)
    .where(SUBTASKS.c.id == bindparam("b_id"))
)
_TASK_HEAD = select(TASKS.c.title, TASKS.c.description, TASKS.c.status).where(TASKS.c.id == bindparam("b_task"))
_TASK_RESULTS = (
    select(SUBTASKS.c.seq, SUBTASKS.c.title, SUBTASKS.c.result)
    .where(SUBTASKS.c.task_id == bindparam("b_task")).order_by(SUBTASKS.c.seq)
)
_SIBLINGS = (
    select(SUBTASKS.c.id, SUBTASKS.c.task_id, SUBTASKS.c.seq, SUBTASKS.c.status, SUBTASKS.c.depends_on,
           SUBTASKS.c.priority)
    .where(SUBTASKS.c.task_id.in_(bindparam("b_tasks", expanding=True)))
    .order_by(SUBTASKS.c.task_id, SUBTASKS.c.seq)
)
# A subtask's outcome, written with its job's success; a cancelled subtask matches nothing. A
# subtask waiting for a person keeps finished_at empty (b_finished None).
_RECORD_RESULT = (
    update(SUBTASKS).where(SUBTASKS.c.id == bindparam("b_id"), SUBTASKS.c.status != SubtaskStatus.CANCELLED)
    .values(result=bindparam("b_result", type_=SUBTASKS.c.result.type),
            validation=bindparam("b_validation", type_=SUBTASKS.c.validation.type),
            validation_score=bindparam("b_score", type_=SUBTASKS.c.validation_score.type),
            divergence_pct=bindparam("b_divergence", type_=SUBTASKS.c.divergence_pct.type),
            executor_model_id=bindparam("b_executor"), validator_model_id=bindparam("b_validator"),
            tiebreaker_model_id=bindparam("b_judge"),
            status=bindparam("b_status", type_=SUBTASKS.c.status.type),
            finished_at=func.coalesce(bindparam("b_finished", type_=SUBTASKS.c.finished_at.type),
                                      SUBTASKS.c.finished_at))
)
_TASK_DONE = (
    update(TASKS).where(TASKS.c.id == bindparam("b_id"), TASKS.c.status != TaskStatus.CANCELLED)
    .values(result=bindparam("b_result", type_=TASKS.c.result.type), status=TaskStatus.COMPLETED,
            finished_at=bindparam("b_finished", type_=TASKS.c.finished_at.type))
)


@dataclass(frozen=True, slots=True)
class _Finished:
    """One subtask's outcome, for the batch hook that records every outcome of a group commit."""

    job_id: int
    subtask_id: int
    task_id: int
    params: dict[str, Any]
    outcomes: tuple[Outcome, ...]
    waiting: bool
    # The task's only subtask: the task is finished in the same transaction (no task.finish job).
    alone: bool
_MARK_QUEUED = (
    update(SUBTASKS).where(SUBTASKS.c.id == bindparam("b_id"), SUBTASKS.c.status == SubtaskStatus.PENDING)
    .values(status=SubtaskStatus.QUEUED)
)


class EngineError(OrchestratorError):
    """An orchestration failure the user should read (no model available, bad plan)."""


@dataclass(frozen=True, slots=True)
class SubmittedTask:
    """What `submit` created."""

    task_id: int
    created: bool


class Engine:
    """Registers the job handlers and offers submit/cancel/resolve to the chat front and the CLI."""

    def __init__(
        self,
        *,
        session_factory: async_sessionmaker[AsyncSession],
        router: Router,
        queue: JobQueue,
        settings: EngineSettings,
        bus: EventBus | None = None,
        embedder: Embedder | None = None,
        monitor_state: Any = None,
    ) -> None:
        self._sessions = session_factory
        self._router = router
        self._queue = queue
        self._settings = settings
        self._bus = bus
        self._embedder = embedder
        self._monitor_state = monitor_state  # bot.monitor.state.MonitorState, when the monitor runs
        self._checker = suspicion.new_checker()
        # Quality metrics for selection, re-read once outcomes this engine recorded have committed.
        self._metrics = MetricsCache()
        self._selector = Selector(
            router=router,
            prefer_smaller=(lambda: bool(monitor_state.prefer_smaller_models)) if monitor_state is not None else None,
            metrics=self._metrics,
        )
        self._candidates = CandidateCache()
        # Specialised AIs' prompts and standing instructions, re-read at most once a second.
        self._prompts = PromptCache()
        self._knowledge = suspicion.KnowledgeIndex()
        # Hot-path lookups read through in-loop SQLite connections when there are some (no thread
        # hops); writes never go through them.
        bind = session_factory.kw.get("bind")
        self._db = bind if isinstance(bind, AsyncEngine) else None
        # Events that describe a job's committed result wait for the queue's "succeeded".
        self._after_commit: dict[int, list[Event]] = {}
        # job id → (task id, answer) of tasks its success hook finished (task.done once committed).
        self._tasks_done: dict[int, tuple[int, str]] = {}

    # -- public API ---------------------------------------------------------------------------

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The session factory the engine writes with (for readers of its rows)."""
        return self._sessions

    @property
    def handlers(self) -> dict[str, Callable[[JobContext], Awaitable[dict[str, Any] | None]]]:
        """Job kind → handler, for the queue's Worker."""
        return {KIND_PLAN: self._plan_job, KIND_SUBTASK: self._subtask_job, KIND_FINISH: self._finish_job,
                KIND_TIEBREAK: self._tiebreak_job}

    async def submit(
        self,
        *,
        title: str,
        description: str = "",
        user_id: int | None = None,
        priority: int = 0,
        category: str | None = None,
        origin: dict[str, Any] | None = None,
        template: str | None = None,
        variables: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        single_step: bool = False,
        workflow_id: int | None = None,
        conversation_id: int | None = None,
    ) -> SubmittedTask:
        """Create a task and queue its planning; the same idempotency key never creates two.

        `single_step` skips the planner: the request is one subtask (a question, `/ask`), still
        executed by one model and validated by another. `workflow_id` runs that workflow with
        `description` as its input: its stored steps are the plan (bot/engine/workflows.py).
        `conversation_id`: the chat conversation the task belongs to, set with the row so its
        checks already see the conversation's earlier answers (drift).
        """
        if workflow_id is not None and (single_step or template):
            raise EngineError("a workflow run is planned from its steps; it takes no template or single step")
        title = title.strip()
        if not title:
            raise EngineError("a task needs a title or a request")
        if len(title) > 255:
            title, description = title[:250] + "…", f"{title}\n\n{description}".strip()
        if len(description) > 100_000:
            raise EngineError("the task description is longer than 100,000 characters")

        async def create() -> tuple[int, bool]:
            # Plain rows go through Core (a submit is one short transaction on the queue's writer,
            # holding SQLite's write lock); rendering a template or a workflow's plan needs the ORM.
            orm = bool(template) or workflow_id is not None
            async with self._queue.session() if orm else self._queue.transaction() as db:
                if idempotency_key:
                    existing = await db.scalar(select(TASKS.c.id).where(TASKS.c.idempotency_key == idempotency_key))
                    if existing is not None:
                        return int(existing), False
                text, kind = description, category
                if template:
                    rendered, template_category = await render_template(cast(AsyncSession, db), name=template,
                                                                        variables=variables or {})
                    text, kind = f"{rendered}\n\n{description}".strip(), category or template_category
                if workflow_id is not None:  # checked (steps, templates, variables) before anything is queued
                    task = await new_workflow_task(cast(AsyncSession, db), workflow_id=workflow_id, input_text=text,
                                                   title=title, user_id=user_id, priority=priority, origin=origin,
                                                   idempotency_key=idempotency_key)
                    return task.id, True
                return await self._insert_task(db, title=title, description=text, user_id=user_id,
                                               priority=priority, category=kind, origin=origin or {},
                                               idempotency_key=idempotency_key, single_step=single_step,
                                               conversation_id=conversation_id), True

        task_id, created = await _retry_deadlocks(create)
        if not created:
            return SubmittedTask(task_id, False)
        if single_step:
            self._publish("task.created", task_id, {"title": title})
            return SubmittedTask(task_id, True)
        await self._queue.enqueue(JobSpec(kind=KIND_PLAN, idempotency_key=f"task:{task_id}:plan",
                                          payload={"task_id": task_id}, priority=priority, task_id=task_id,
                                          max_attempts=self._settings.max_attempts,
                                          timeout_s=self._settings.subtask_timeout_s))
        self._publish("task.created", task_id, {"title": title})
        return SubmittedTask(task_id, True)

    async def _insert_task(self, db: AsyncSession | AsyncConnection, *, title: str, description: str,
                           user_id: int | None, priority: int, category: str | None, origin: dict[str, Any],
                           idempotency_key: str | None, single_step: bool, conversation_id: int | None = None) -> int:
        """The task row; a single-step task also gets its one subtask, already queued."""
        now = utcnow()
        inserted = await execute_dml(db, _INSERT_TASK, {
            "title": title, "description": description, "user_id": user_id, "priority": priority,
            "category": category, "origin": origin, "idempotency_key": idempotency_key,
            "conversation_id": conversation_id, "status": TaskStatus.RUNNING if single_step else TaskStatus.PENDING,
            "started_at": now if single_step else None})
        task_id = int(cast(int, inserted.lastrowid))  # a plain INSERT: the new row's id on both backends
        if single_step:
            added = await execute_dml(db, _INSERT_SUBTASK, {
                "task_id": task_id, "seq": 1, "title": title, "description": description or title,
                "category": category or "general", "depends_on": [], "priority": priority,
                "status": SubtaskStatus.QUEUED, "max_attempts": self._settings.max_attempts,
                "idempotency_key": f"task:{task_id}:subtask:1"})
            subtask_id = int(cast(int, added.lastrowid))
            await self._queue.enqueue_in(db, [JobSpec(
                kind=KIND_SUBTASK, idempotency_key=f"subtask:{subtask_id}:run", payload={"subtask_id": subtask_id},
                priority=priority, task_id=task_id, subtask_id=subtask_id, max_attempts=self._settings.max_attempts,
                timeout_s=self._settings.subtask_timeout_s)])
        return task_id

    async def cancel(self, task_id: int) -> bool:
        """Cancel a task's queued and running work; False when it had already ended."""
        async with self._queue.session() as session:
            task = await session.get(Task, task_id)
            if task is None:
                raise EngineError(f"there is no task {task_id}")
            if task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
                return False
            task.status = TaskStatus.CANCELLED
            task.finished_at = utcnow()
            await session.execute(
                update(Subtask)
                .where(Subtask.task_id == task_id, Subtask.status.not_in(list(TERMINAL_SUBTASK)))
                .values(status=SubtaskStatus.CANCELLED)
            )
        await self._queue.cancel_task(task_id)
        self._publish("task.cancelled", task_id, {})
        return True

    async def resolve_tie(self, subtask_id: int, *, choose: str, decided_by: str) -> None:
        """A person's decision on an escalated tie: the "executor" or "validator" answer wins, or
        "rerun" runs the tie-break again from the stored answers and verdict (another judge when one
        is available). Exactly one decision wins: the status moves out of "tiebreaking" atomically.
        """
        if choose not in ("executor", "validator", "rerun"):
            raise EngineError("choose the executor's or the validator's answer, or rerun the tie-break")
        async with self._queue.session() as session:
            subtask = await session.get(Subtask, subtask_id)
            if subtask is None or not (subtask.validation or {}).get("needs_decision"):
                raise EngineError(f"subtask {subtask_id} is not waiting for a decision")
            target = SubtaskStatus.QUEUED if choose == "rerun" else SubtaskStatus.COMPLETED
            claimed = await session.execute(update(Subtask).where(
                Subtask.id == subtask_id, Subtask.status == SubtaskStatus.TIEBREAKING).values(status=target))
            if getattr(claimed, "rowcount", 0) != 1:
                raise EngineError(f"subtask {subtask_id} is not waiting for a decision")
            await session.refresh(subtask)
            validation = dict(subtask.validation or {})
            validation.update(needs_decision=False, decision={"chosen": choose, "by": decided_by})
            subtask.validation = validation
            if choose == "rerun":
                reruns = len(validation.get("tiebreak_history") or []) + 1
                await self._queue.enqueue_in(session, [JobSpec(
                    kind=KIND_TIEBREAK, idempotency_key=f"subtask:{subtask_id}:tiebreak:{reruns}",
                    payload={"subtask_id": subtask_id}, priority=subtask.priority, task_id=subtask.task_id,
                    subtask_id=subtask_id, max_attempts=self._settings.max_attempts,
                    timeout_s=self._settings.subtask_timeout_s)])
            else:
                winner = validation.get("executor_answer") if choose == "executor" \
                    else validation.get("reference_answer")
                subtask.result = winner or subtask.result
                subtask.finished_at = utcnow()
                await self._schedule_after(session, subtask)
        self._publish("subtask.decided", subtask.task_id, {"subtask_id": subtask_id, "chosen": choose,
                                                            "by": decided_by})

    def on_queue_event(self, event: QueueEvent) -> None:
        """Worker callback: publish what a job committed; a job that will never succeed fails its task."""
        pending = self._after_commit.pop(event.job_id, []) if event.name != "claimed" else []
        done = self._tasks_done.pop(event.job_id, None) if event.name != "claimed" else None
        if event.name == "succeeded" and event.kind in (KIND_SUBTASK, KIND_TIEBREAK):
            self._metrics.invalidate()  # its outcomes are committed: the next choice reads them
        if event.name == "succeeded" and self._bus is not None:
            for item in pending:
                self._bus.publish(item)
            if done is not None:
                self._bus.publish(Event(topic="task", kind="task.done", task_id=done[0], payload={"result": done[1]}))
        if event.name == "dead":
            asyncio.get_running_loop().create_task(self._job_dead(event))

    # -- planning -----------------------------------------------------------------------------

    async def _plan_job(self, ctx: JobContext) -> dict[str, Any]:
        task_id = int(ctx.payload["task_id"])
        # -- workflow runs: the workflow's stored steps are the plan, no planner model (bot/engine/workflows.py) --
        try:
            workflow_plan = await workflow_plan_for(self._sessions, task_id)
        except WorkflowError as err:
            await self._fail_task(task_id, err.message)
            return {"failed": err.message}
        if workflow_plan is not None:
            return self._start_workflow(ctx, task_id, workflow_plan)
        # -- end of the workflow branch -----------------------------------------------------------------------
        async with self._sessions() as session, session.begin():
            task = await session.get(Task, task_id)
            if task is None or task.status == TaskStatus.CANCELLED:
                return {"skipped": "task gone or cancelled"}
            task.status = TaskStatus.PLANNING
            task.started_at = task.started_at or utcnow()
            planner = await role_prompt(session, AiRole.PLANNER)
            instructions = await instructions_for(session, category=task.category, task_id=task_id)
            request_text = f"{task.title}\n\n{task.description}".strip()
            category = task.category or "planning"
        self._publish("task.planning", task_id, {})
        plan_data = await ctx.step("plan", lambda: self._make_plan(
            task_id=task_id, request_text=request_text, category=category,
            system=system_with_instructions(planner.system_prompt, instructions),
            temperature=planner.temperature, preferred=planner.preferred_model_id,
        ))
        if "error" in plan_data:
            await self._fail_task(task_id, plan_data["error"])
            return {"failed": plan_data["error"]}
        plan = Plan.model_validate(plan_data["plan"])
        if not plan.subtasks:
            reason = "the planner needs answers first: " + " ".join(plan.questions)
            await self._fail_task(task_id, reason)
            return {"failed": reason}

        async def write_plan(session: AsyncSession) -> None:
            task = await session.get(Task, task_id)
            if task is None or task.status == TaskStatus.CANCELLED:
                return
            existing = await session.scalar(select(Subtask.id).where(Subtask.task_id == task_id).limit(1))
            if existing is not None:
                return
            rows = []
            for planned in plan.topological_order():
                row = Subtask(task_id=task_id, seq=planned.id, title=planned.title[:255],
                              description=planned.description, category=planned.category,
                              depends_on=list(planned.depends_on), priority=task.priority + planned.priority,
                              expected_output=planned.expected_output or None, status=SubtaskStatus.PENDING,
                              max_attempts=self._settings.max_attempts,
                              idempotency_key=f"task:{task_id}:subtask:{planned.id}")
                session.add(row)
                rows.append(row)
            await session.flush()
            task.status = TaskStatus.RUNNING
            await self._enqueue_ready(session, task_id, rows)

        ctx.on_commit(write_plan)
        self._publish_after_commit(ctx, "task.planned", task_id, {"subtasks": [s.model_dump() for s in plan.subtasks],
                                                "planner": plan_data["model"]})
        return {"subtasks": len(plan.subtasks), "planner": plan_data["model"]}

    def _start_workflow(self, ctx: JobContext, task_id: int, plan: WorkflowPlan) -> dict[str, Any]:
        """Write a workflow run's subtasks when the plan job commits, and queue the ready ones."""

        async def write_steps(session: AsyncSession) -> None:
            rows = await write_workflow_subtasks(session, task_id, plan, max_attempts=self._settings.max_attempts)
            if rows:
                await self._enqueue_ready(session, task_id, rows)

        ctx.on_commit(write_steps)
        self._publish("task.planning", task_id, {})
        self._publish_after_commit(ctx, "task.planned", task_id, plan.event_payload())
        return {"subtasks": len(plan.steps), "workflow_id": plan.workflow_id, "workflow_version": plan.version}

    async def _make_plan(self, *, task_id: int, request_text: str, category: str, system: str,
                         temperature: float, preferred: int | None) -> dict[str, Any]:
        """Ask a planner; a malformed plan goes back once with the error, then to another planner."""
        tried: list[str] = []
        errors: list[str] = []
        schema = json_schema(Plan)
        for _ in range(2):
            async with self._sessions() as session:
                choice = await self._selector.choose(session, category="planning", exclude=tried,
                                                     prefer_model_id=preferred)
            if choice is None:
                break
            model = choice.candidate.key
            tried.append(model)
            self._log_choice(task_id, None, "planner", choice)
            messages = [
                ChatMessage("system", system),
                ChatMessage("user", _plan_request(request_text)),
            ]
            for attempt in range(2):
                result = await self._call(task_id=task_id, subtask_id=None, event="plan", choice=choice,
                                          request=ChatRequest(model=model, messages=messages, json_schema=schema,
                                                              temperature=temperature))
                try:
                    plan = parse_output(Plan, result.text)
                except MalformedOutputError as err:
                    errors.append(f"{model}: {err.message} ({err.detail})")
                    await self._log(task_id, None, choice, "plan.malformed", level=LogLevel.WARNING,
                                    details={"error": err.detail, "attempt": attempt + 1})
                    messages = [*messages, ChatMessage("assistant", result.text[:8000]),
                                ChatMessage("user", f"That plan is invalid: {err.detail}. Reply with only the "
                                                    "corrected JSON object.")]
                    continue
                return {"plan": plan.model_dump(), "model": model}
        reason = "; ".join(errors) if errors else "no model is available to plan"
        return {"error": f"no valid plan: {reason}"[:2000]}

    # -- one subtask --------------------------------------------------------------------------

    async def _subtask_job(self, ctx: JobContext) -> dict[str, Any]:
        subtask_id = int(ctx.payload["subtask_id"])
        async with self._read() as reads:
            subtask = (await reads.execute(_SUBTASK_CONTEXT, {"b_id": subtask_id})).first()
            if subtask is None or subtask.status in TERMINAL_SUBTASK:
                return {"skipped": "subtask gone or finished"}
            if subtask.task_status == TaskStatus.CANCELLED:
                return {"skipped": "task cancelled"}
            # Written with the job's first durable write (the first checkpoint or step).
            ctx.defer(PendingWrite(_START_SUBTASK, {"b_id": subtask_id, "b_attempts": ctx.job.attempts,
                                                    "b_now": utcnow()}))
            executor_role = await self._executor_role(reads, subtask_id, subtask.category, subtask.specialized_ai_id)
            task_id, category = int(subtask.task_id), subtask.category or "general"
            instructions = await self._prompts.instructions(reads, category=subtask.category, task_id=task_id)
            context = await _dependency_context(reads, task_id, subtask.depends_on)
            prompt = _subtask_prompt(subtask.task_title, subtask.task_description, subtask, context)
            threshold = self._settings.threshold_for(subtask.category)
            alone = int(subtask.subtasks) == 1
            # Only a task asked in a chat conversation can have earlier answers to drift from.
            in_conversation = subtask.conversation_id is not None
        system = system_with_instructions(executor_role.system_prompt, instructions)
        self._publish("subtask.started", task_id, {"subtask_id": subtask_id})

        # Choices are lazy steps: stored with the first durable write that depends on them.
        executor_data = await ctx.step("select.executor", lambda: self._choose(
            category=category, exclude=(), diverse_from=(), prefer=executor_role.preferred_model_id), lazy=True)
        if executor_data is None:
            raise PermanentJobError("no model is available to execute the subtask")
        executor = _candidate(executor_data)
        self._log_choice(task_id, subtask_id, "executor", executor_data)

        async def execute() -> dict[str, Any]:
            data = await self._execute(ctx, task_id=task_id, subtask_id=subtask_id, executor=executor, system=system,
                                       prompt=prompt, temperature=executor_role.temperature,
                                       max_tokens=executor_role.max_tokens)
            # The answer reaches the subtask row in the step's own transaction, before validation.
            ctx.defer(PendingWrite(_SAVE_RESULT, {"b_id": subtask_id, "b_result": str(data["text"]),
                                                  "b_executor": executor.model_id}))
            return data

        execution = await ctx.step("execute", execute)
        answer = str(execution["text"])

        validator_data = await ctx.step("select.validator", lambda: self._choose(
            category=category, exclude=(executor.key,), diverse_from=(executor,), prefer=None), lazy=True)
        if validator_data is None:
            report = await ctx.step("check", lambda: self._check(
                task_id=task_id, subtask_id=subtask_id, checked=executor, prompt=prompt, context=context, answer=answer,
                references=(), execution=execution, in_conversation=in_conversation), lazy=True)
            self._publish_suspect(task_id, subtask_id, report, handled_by="none")
            return await self._finish_subtask(ctx, task_id=task_id, subtask_id=subtask_id, category=category,
                                              alone=alone, executor=executor, execution=execution, final=answer,
                                              validation={"status": "unvalidated",
                                                          "reason": "no second model is available to validate",
                                                          "hallucination": report})
        validator = _candidate(validator_data)
        self._log_choice(task_id, subtask_id, "validator", validator_data)
        self._publish("subtask.validating", task_id, {"subtask_id": subtask_id, "validator": validator.key})

        # The independent answer and the verdict need nothing from each other: both requests go
        # out at once (a server with parallel slots answers both in the time of one), and each is
        # stored as its own step when it lands (the first one's commit runs while the other call
        # is still out).
        reference, verdict_data = await both(
            ctx.step("reference", lambda: self._text_call(
                task_id=task_id, subtask_id=subtask_id, event="reference", candidate=validator,
                messages=[ChatMessage("system", system), ChatMessage("user", prompt)],
                temperature=executor_role.temperature, max_tokens=executor_role.max_tokens)),
            ctx.step("verdict", lambda: self._verdict(
                task_id=task_id, subtask_id=subtask_id, validator=validator, prompt=prompt, answer=answer)))
        if "error" in verdict_data:
            return await self._finish_subtask(ctx, task_id=task_id, subtask_id=subtask_id, category=category,
                                              alone=alone, executor=executor, execution=execution, final=answer,
                                              validation={"status": "unvalidated", "validator": validator.key,
                                                          "reason": verdict_data["error"]})
        verdict = Verdict.model_validate(verdict_data)
        divergence = await measure_divergence(answer=answer, reference=str(reference["text"]), score=verdict.score,
                                              decision=verdict.decision, embedder=self._embedder)
        validation: dict[str, Any] = {
            "status": "validated", "validator": validator.key, "validator_model_id": validator.model_id,
            "verdict": verdict.model_dump(), "divergence": divergence.as_dict(), "threshold_pct": threshold,
            "reference_answer": reference["text"], "executor_answer": answer,
        }
        await self._log(task_id, subtask_id, _choice_like(validator), "divergence",
                        details=divergence.as_dict())
        self._publish("subtask.verdict", task_id, {
            "subtask_id": subtask_id, "validator": validator.key, "score": verdict.score,
            "decision": verdict.decision, "issues": verdict.issues, "divergence_pct": round(divergence.pct, 1),
        })
        # Checks are lazy steps: no model call, so no transaction of their own; the report is stored
        # with the next durable write (recovery's answer or the success), and recomputed if the
        # attempt dies before it.
        report = await ctx.step("check", lambda: self._check(
            task_id=task_id, subtask_id=subtask_id, checked=executor, prompt=prompt, context=context, answer=answer,
            references=(str(reference["text"]),), execution=execution, in_conversation=in_conversation), lazy=True)
        validation["hallucination"] = report
        if divergence.pct <= threshold:
            final, replaced_by = answer, None
            if report["suspect"]:  # the validator agreed, so no tie-break will look again: recover
                self._publish_suspect(task_id, subtask_id, report, handled_by="recovery")
                recovery = await self._recover(
                    ctx, task_id=task_id, subtask_id=subtask_id, category=category, system=system, prompt=prompt,
                    context=context, executor=executor, validator=validator, reference=str(reference["text"]),
                    report=report, temperature=executor_role.temperature, max_tokens=executor_role.max_tokens,
                    in_conversation=in_conversation)
                report["recovery"] = {k: v for k, v in recovery.items() if k != "candidate"}
                if recovery["kept"] == "retry":
                    final, replaced_by = str(recovery["text"]), recovery["candidate"]
            return await self._finish_subtask(ctx, task_id=task_id, subtask_id=subtask_id, category=category,
                                              alone=alone, executor=executor, execution=execution, final=final,
                                              validation=validation, verdict=verdict, validator=validator,
                                              divergence=divergence, replaced_by=replaced_by)
        if report["suspect"]:
            self._publish_suspect(task_id, subtask_id, report, handled_by="tiebreak")
        return await self._tie_break(ctx, task_id=task_id, subtask_id=subtask_id, category=category, prompt=prompt,
                                     executor=executor, validator=validator, execution=execution, answer=answer,
                                     reference=str(reference["text"]), verdict=verdict, divergence=divergence,
                                     validation=validation, alone=alone)

    async def _tie_break(self, ctx: JobContext, *, task_id: int, subtask_id: int, category: str, prompt: str,
                         executor: Candidate, validator: Candidate, execution: dict[str, Any], answer: str,
                         reference: str, verdict: Verdict, divergence: Divergence,
                         validation: dict[str, Any], avoid_judges: tuple[str, ...] = (),
                         alone: bool = False, rerun: bool = False) -> dict[str, Any]:
        """A third model judges executor vs validator twice, positions swapped; a flip is a tie.

        `avoid_judges` (a re-run) are skipped when another third model is available. `rerun`: the
        execution was counted when it ran, so only the new tie-break reaches the metrics.
        """
        ctx.defer(PendingWrite(_SET_STATUS, {"b_id": subtask_id, "b_status": SubtaskStatus.TIEBREAKING}))
        judge_data = await ctx.step("select.tiebreaker", lambda: self._choose(
            category=category, exclude=(executor.key, validator.key, *avoid_judges),
            diverse_from=(executor, validator), prefer=None), lazy=True)
        if judge_data is None and avoid_judges:
            judge_data = await ctx.step("select.tiebreaker.again", lambda: self._choose(
                category=category, exclude=(executor.key, validator.key), diverse_from=(executor, validator),
                prefer=None), lazy=True)
        outcome: str
        tiebreak: dict[str, Any] = {}
        judge: Candidate | None = None
        if judge_data is None:
            outcome, tiebreak["reason"] = "tie", "no third model is available to break the tie"
        else:
            judge = _candidate(judge_data)
            self._log_choice(task_id, subtask_id, "tiebreaker", judge_data)
            self._publish("subtask.tiebreak", task_id, {"subtask_id": subtask_id, "judge": judge.key})
            review = f"score {verdict.score:.0f}, {verdict.decision}: " + "; ".join(verdict.issues[:10])
            flagged = validation.get("hallucination") or {}
            if flagged.get("suspect"):
                review += ("\nAutomatic checks flagged the RESULT as a possible hallucination: "
                           + "; ".join(suspicion.reasons(flagged)))
            # The two orders are independent judgements: asked at once, stored as each lands.
            first, second = await both(
                ctx.step("judge.executor_first", lambda: self._judge(
                    task_id=task_id, subtask_id=subtask_id, judge=judge, prompt=prompt, first=answer,
                    second=reference, review=review)),
                ctx.step("judge.validator_first", lambda: self._judge(
                    task_id=task_id, subtask_id=subtask_id, judge=judge, prompt=prompt, first=reference,
                    second=answer, review=review)))
            picks = (_pick(first.get("winner"), executor_shown="result"),
                     _pick(second.get("winner"), executor_shown="alternative"))
            outcome = picks[0] if picks[0] == picks[1] else "tie"
            tiebreak = {"judge": judge.key, "judge_model_id": judge.model_id, "executor_first": first,
                        "validator_first": second, "picks": list(picks)}
            if picks[0] != picks[1]:
                tiebreak["reason"] = "the two judgements disagree when the order is swapped (position bias)"
        policy = self._settings.tie_policy
        needs_decision = False
        if outcome == "tie":
            if policy == "prefer_validator":
                outcome = "validator"
            elif policy == "escalate":
                needs_decision = True
            else:
                outcome = "executor"
            tiebreak["policy"] = policy
        tiebreak["outcome"] = outcome
        validation.update(tiebreak=tiebreak, disputed=needs_decision or tiebreak.get("policy") is not None,
                          needs_decision=needs_decision)
        final = reference if outcome == "validator" else answer
        self._publish("subtask.tiebroken", task_id, {"subtask_id": subtask_id, "outcome": outcome,
                                                     "needs_decision": needs_decision})
        return await self._finish_subtask(ctx, task_id=task_id, subtask_id=subtask_id, category=category,
                                          executor=executor, execution=execution, final=final,
                                          validation=validation, verdict=verdict, validator=validator,
                                          divergence=divergence, judge=judge, outcome=outcome,
                                          waiting=needs_decision, alone=alone, rerun=rerun)

    async def _tiebreak_job(self, ctx: JobContext) -> dict[str, Any]:
        """Run the tie-break again from the answers and verdict the subtask row already holds."""
        subtask_id = int(ctx.payload["subtask_id"])
        async with self._sessions() as session:
            subtask = await session.get(Subtask, subtask_id)
            if subtask is None or subtask.status != SubtaskStatus.QUEUED:
                return {"skipped": "subtask is not waiting for a re-run"}
            task = await session.get(Task, subtask.task_id)
            if task is None or task.status == TaskStatus.CANCELLED:
                return {"skipped": "task cancelled"}
            validation = dict(subtask.validation or {})
            candidates = {c.model_id: c for c in await load_candidates(session, router=self._router)}
            task_id, category = task.id, subtask.category or "general"
            context = await _dependency_context(session, task_id, subtask.depends_on)
            prompt = _subtask_prompt(task.title, task.description, subtask, context)
        executor = candidates.get(subtask.executor_model_id or 0)
        validator = candidates.get(subtask.validator_model_id or 0)
        if executor is None or validator is None:
            raise PermanentJobError("the executor or the validator of this subtask is no longer available")
        previous = dict(validation.pop("tiebreak", None) or {})
        validation["tiebreak_history"] = [*(validation.get("tiebreak_history") or []), previous]
        judged = tuple(h.get("judge") for h in validation["tiebreak_history"] if h.get("judge"))
        stored = dict(validation.get("divergence") or {})
        divergence = Divergence(pct=float(stored.get("pct", 100.0)), verdict_term=float(stored.get("verdict_term", 0)),
                                semantic_term=float(stored.get("semantic_term", 0)),
                                claim_term=float(stored.get("claim_term", 0)),
                                similarity=float(stored.get("similarity", 0)), embedder=str(stored.get("embedder", "")),
                                hard_conflict=bool(stored.get("hard_conflict")),
                                conflicts=tuple(stored.get("conflicts") or ()))
        return await self._tie_break(ctx, task_id=task_id, subtask_id=subtask_id, category=category, prompt=prompt,
                                     executor=executor, validator=validator, execution={"latency_ms": 0.0},
                                     answer=str(validation.get("executor_answer") or subtask.result or ""),
                                     reference=str(validation.get("reference_answer") or ""),
                                     verdict=Verdict.model_validate(validation.get("verdict") or {}),
                                     divergence=divergence, validation=validation, avoid_judges=judged, rerun=True)

    async def _finish_subtask(self, ctx: JobContext, *, task_id: int, subtask_id: int, category: str,
                              executor: Candidate, execution: dict[str, Any], final: str,
                              validation: dict[str, Any], verdict: Verdict | None = None,
                              validator: Candidate | None = None, divergence: Divergence | None = None,
                              judge: Candidate | None = None, outcome: str | None = None,
                              waiting: bool = False, replaced_by: Candidate | None = None,
                              alone: bool = False, rerun: bool = False) -> dict[str, Any]:
        """Subtask row, quality metrics and dependants' jobs, written with the job's success.

        `alone`: the task's only subtask, so its answer is the task's and the task is finished in
        the same transaction (task.finish would only copy it, at the cost of a job of its own).

        `replaced_by`: recovery kept another model's answer, so the executor's run counts as a
        failure and the success is that model's.
        """
        threshold = self._settings.threshold_for(category)
        executor_ok = outcome == "executor" or (outcome is None and (divergence is None or divergence.pct <= threshold))
        outcomes = [Outcome(model_id=executor.model_id, category=category,
                            tiebreak=_tiebreak_result(outcome, side="executor"))] if rerun else [
            Outcome(model_id=executor.model_id, category=category, succeeded=executor_ok and replaced_by is None,
                    duration_ms=float(execution.get("latency_ms") or 0.0),
                    validation_score=verdict.score if verdict else None,
                    tiebreak=_tiebreak_result(outcome, side="executor"))]
        if replaced_by is not None:
            outcomes.append(Outcome(model_id=replaced_by.model_id, category=category, succeeded=executor_ok))
        if validator is not None and outcome in ("executor", "validator"):
            outcomes.append(Outcome(model_id=validator.model_id, category=category,
                                    tiebreak=_tiebreak_result(outcome, side="validator")))

        params: dict[str, Any] = {
            "b_id": subtask_id, "b_result": final, "b_validation": validation,
            "b_score": verdict.score if verdict else None,
            "b_divergence": round(divergence.pct, 2) if divergence else None,
            "b_executor": executor.model_id, "b_validator": validator.model_id if validator else None,
            "b_judge": judge.model_id if judge else None,
            "b_status": SubtaskStatus.TIEBREAKING if waiting else SubtaskStatus.COMPLETED,
            "b_finished": None if waiting else utcnow(),
        }
        ctx.on_commit_batch(self._record_finished, _Finished(
            job_id=ctx.job.id, subtask_id=subtask_id, task_id=task_id, params=params, outcomes=tuple(outcomes),
            waiting=waiting, alone=alone))
        self._publish_after_commit(ctx, "subtask.done", task_id, {
            "subtask_id": subtask_id, "status": "waiting" if waiting else "completed",
            "validation": validation.get("status"), "divergence_pct": round(divergence.pct, 1) if divergence else None,
        })
        return {"subtask_id": subtask_id, "outcome": outcome or validation.get("status")}

    # -- finishing ----------------------------------------------------------------------------

    async def _finish_job(self, ctx: JobContext) -> dict[str, Any]:
        task_id = int(ctx.payload["task_id"])
        async with self._read() as reads:
            task = (await reads.execute(_TASK_HEAD, {"b_task": task_id})).first()
            if task is None or task.status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.FAILED):
                return {"skipped": "task already ended"}
            subtasks = list((await reads.execute(_TASK_RESULTS, {"b_task": task_id})).all())
            request_text = f"{task.title}\n\n{task.description}".strip()
        if len(subtasks) == 1:
            final = subtasks[0].result or ""
        else:
            merged = await ctx.step("synthesis", lambda: self._synthesise(task_id, request_text, subtasks))
            final = str(merged["text"])

        ctx.on_commit_batch(self._record_task_results, {"b_id": task_id, "b_result": final, "b_finished": utcnow()})
        self._publish_after_commit(ctx, "task.done", task_id, {"result": final})
        return {"task_id": task_id, "chars": len(final)}

    async def _record_task_results(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """The final answers of the tasks finished in one group commit (one executemany)."""
        await execute_dml(session, _TASK_DONE, rows)

    async def _synthesise(self, task_id: int, request_text: str, subtasks: Sequence[Any]) -> dict[str, Any]:
        """A writer model merges the subtasks' results; if none can, the results are joined in order."""
        sections = "\n\n".join(f"## {s.seq}. {s.title}\n\n{s.result or ''}" for s in subtasks)
        async with self._read() as reads:
            writer = await self._prompts.role(reads, AiRole.WRITER)
            candidates = await self._candidates.get(reads, router=self._router)
            choice = await self._selector.choose(reads, category="writing", prefer_model_id=writer.preferred_model_id,
                                                 candidates=candidates)
        if choice is None:
            return {"text": sections, "merged_by": None}
        messages = [ChatMessage("system", writer.system_prompt),
                    ChatMessage("user", f"Request:\n{request_text}\n\nThe work was done in parts:\n\n{sections}\n\n"
                                        "Write the complete final answer to the request from these parts. Keep "
                                        "every fact, number and piece of code; remove repetition; add nothing new.")]
        try:
            result = await self._call(task_id=task_id, subtask_id=None, event="synthesis", choice=choice,
                                      request=ChatRequest(model=choice.candidate.key, messages=messages,
                                                          temperature=writer.temperature))
        except ProviderError as err:  # expected: the parts themselves are the answer, joined in order
            log.warning("synthesis failed; joining the parts", task_id=task_id, error=str(err))
            return {"text": sections, "merged_by": None}
        return {"text": result.text or sections, "merged_by": choice.candidate.key}

    # -- model calls --------------------------------------------------------------------------

    def _read(self) -> AbstractAsyncContextManager[Reads]:
        """Where hot-path reads go: an in-loop read-only SQLite connection, else a pooled connection,
        taken only when a statement runs (cached lookups need none)."""
        return lazy_reads(self._db) if self._db is not None else self._sessions()

    async def _executor_role(self, reads: Reads, subtask_id: int, category: str | None,
                             specialized_ai_id: int | None) -> RolePrompt:
        """The specialised AI that executes a subtask: the one its workflow step names, else its category's role.

        A named AI that was deleted or switched off since the run was planned falls back to the role
        (logged), so the run still finishes.
        """
        if specialized_ai_id is not None:
            named = await self._prompts.ai(reads, int(specialized_ai_id))
            if named is not None:
                return named
            log.warning("the subtask's specialised AI is gone or switched off; using its category's role",
                        subtask_id=subtask_id, specialized_ai_id=specialized_ai_id)
        return await self._prompts.role(reads, role_for_category(category))

    async def _choose(self, *, category: str, exclude: tuple[str, ...], diverse_from: tuple[Candidate, ...],
                      prefer: int | None) -> dict[str, Any] | None:
        async with self._read() as reads:
            candidates = await self._candidates.get(reads, router=self._router)
            choice = await self._selector.choose(reads, category=category, exclude=exclude,
                                                 diverse_from=diverse_from, prefer_model_id=prefer,
                                                 candidates=candidates)
        return None if choice is None else choice.as_dict() | {"provider_id": choice.candidate.provider_id,
                                                               "is_local": choice.candidate.is_local,
                                                               "is_loaded": choice.candidate.is_loaded}

    async def _check(self, *, task_id: int, subtask_id: int, checked: Candidate, prompt: str, context: str,
                     answer: str, references: tuple[str, ...], execution: dict[str, Any] | None,
                     in_conversation: bool) -> dict[str, Any]:
        """The hallucination report on one answer (bot/engine/suspicion.py), logged with its evidence."""
        async with self._read() as reads:
            passages = await self._knowledge.passages(reads, prompt)
            earlier = await suspicion.earlier_answers(reads, task_id) if in_conversation else []
        report = await self._checker.check(suspicion.check_input(
            prompt=prompt, context=context, answer=answer, references=references, knowledge=passages,
            stream=(execution or {}).get("stream"), earlier=earlier))
        data = report.as_dict()
        stopped = (execution or {}).get("stopped")
        if stopped and not data["suspect"]:  # cut off while streaming: never a clean answer
            data.update(suspect=True, confidence=min(int(data["confidence"]), data["threshold"] - 1))
            data["findings"] = [stopped, *data["findings"]]
        await self._log(task_id, subtask_id, _choice_like(checked), "hallucination.check",
                              level=LogLevel.WARNING if data["suspect"] else LogLevel.INFO, details=data)
        return data

    async def _recover(self, ctx: JobContext, *, task_id: int, subtask_id: int, category: str, system: str,
                       prompt: str, context: str, executor: Candidate, validator: Candidate, reference: str,
                       report: dict[str, Any], temperature: float, max_tokens: int | None,
                       in_conversation: bool) -> dict[str, Any]:
        """A suspect answer the validator agreed with: another model answers the saved request; the better stays.

        Without a third model the validator's own independent answer is the alternative.
        """
        other = await ctx.step("select.recovery", lambda: self._choose(
            category=category, exclude=(executor.key, validator.key), diverse_from=(executor, validator),
            prefer=None), lazy=True)
        references: tuple[str, ...]
        if other is None:
            candidate, source, text, references = validator, "validator's independent answer", reference, ()
        else:
            candidate = _candidate(other)
            self._log_choice(task_id, subtask_id, "recovery", other)
            got = await ctx.step("recover.answer", lambda: self._text_call(
                task_id=task_id, subtask_id=subtask_id, event="recovery", candidate=candidate,
                messages=suspicion.recovery_messages(system, prompt, report), temperature=temperature,
                max_tokens=max_tokens))
            source, text, references = "retry by another model", str(got["text"]), (reference,)
        retry_report = await ctx.step("recover.check", lambda: self._check(
            task_id=task_id, subtask_id=subtask_id, checked=candidate, prompt=prompt, context=context, answer=text,
            references=references, execution=None, in_conversation=in_conversation), lazy=True)
        kept = "retry" if suspicion.keep_retry(report, retry_report) else "original"
        recovery = {"model": candidate.key, "model_id": candidate.model_id, "source": source, "text": text,
                    "report": retry_report, "kept": kept, "candidate": candidate}
        await self._log(task_id, subtask_id, _choice_like(candidate), "hallucination.recovery", details={
            "model": candidate.key, "source": source, "kept": kept, "original_confidence": report["confidence"],
            "retry_confidence": retry_report["confidence"]})
        self._publish("subtask.recovered", task_id, {
            "subtask_id": subtask_id, "model": candidate.key, "kept": kept,
            "original_confidence": report["confidence"], "retry_confidence": retry_report["confidence"]})
        return recovery

    def _publish_suspect(self, task_id: int, subtask_id: int, report: dict[str, Any], *, handled_by: str) -> None:
        if report.get("suspect"):
            self._publish("subtask.suspect", task_id, {
                "subtask_id": subtask_id, "confidence": report["confidence"], "reasons": suspicion.reasons(report),
                "handled_by": handled_by})

    async def _execute(self, ctx: JobContext, *, task_id: int, subtask_id: int, executor: Candidate, system: str,
                       prompt: str, temperature: float, max_tokens: int | None) -> dict[str, Any]:
        """Stream the executor's full answer, checkpointing it; a resumed attempt continues from it."""
        partial = str(ctx.partial("output", "") or "")
        request = ChatRequest(model=executor.key, messages=[ChatMessage("system", system), ChatMessage("user", prompt)],
                              temperature=temperature, max_tokens=max_tokens or self._settings.execute_max_tokens,
                              continue_from=partial or None)
        text = partial
        last_saved, saved_len = time.monotonic(), len(partial)
        started = time.monotonic()
        usage: dict[str, Any] = {}
        if partial:
            self._publish("subtask.resumed", task_id, {"subtask_id": subtask_id, "chars": len(partial)})
        current_work.set((task_id, subtask_id))
        # A looping or runaway generation is cut off as it streams; the check and recovery see why.
        guard = StreamGuard()
        guard.feed(partial)
        recorder = StreamStatsRecorder(started)
        stopped: dict[str, Any] | None = None
        finished, finish_reason = False, None
        stream = self._router.stream_chat(request)
        with self._busy(executor.key):
            try:
                async for delta in stream:
                    if delta.text:
                        recorder.delta(time.monotonic())
                        text += delta.text
                        self._publish("subtask.token", task_id, {"subtask_id": subtask_id, "text": delta.text})
                        finding = guard.feed(delta.text)
                        if finding is not None:
                            stopped = finding.as_dict()
                            break
                    if delta.done:
                        finished, finish_reason = True, delta.finish_reason
                        if delta.usage is not None:
                            usage = {"prompt_tokens": delta.usage.prompt_tokens,
                                     "completion_tokens": delta.usage.completion_tokens}
                    now = time.monotonic()
                    if len(text) > saved_len and (now - last_saved >= self._settings.checkpoint_interval_s
                                                  or len(text) - saved_len >= 4000):
                        await ctx.checkpoint("output", text)
                        last_saved, saved_len = now, len(text)
            finally:
                closer = getattr(stream, "aclose", None)
                if closer is not None:
                    await closer()
        ended = time.monotonic()
        latency_ms = (ended - started) * 1000
        if not text.strip():
            raise ProviderError(f"{executor.key} returned an empty answer")
        stats = asdict(recorder.stats(ended_at=ended, finished=finished or stopped is None,
                                      finish_reason=finish_reason))
        if stopped is not None:
            self._publish("subtask.stopped", task_id, {"subtask_id": subtask_id, "reason": stopped["reason"]})
        await self._log(task_id, subtask_id, _choice_like(executor), "execute", prompt=prompt, response=text,
                        latency_ms=latency_ms, tokens=usage,
                        details={"resumed_from_chars": len(partial), "stopped": stopped})
        return {"text": text, "latency_ms": latency_ms, "usage": usage, "model": executor.key, "stream": stats,
                "stopped": stopped}

    async def _text_call(self, *, task_id: int, subtask_id: int | None, event: str, candidate: Candidate,
                         messages: list[ChatMessage], temperature: float, max_tokens: int | None) -> dict[str, Any]:
        result = await self._call(task_id=task_id, subtask_id=subtask_id, event=event, choice=_choice_like(candidate),
                                  request=ChatRequest(model=candidate.key, messages=messages, temperature=temperature,
                                                      max_tokens=max_tokens or self._settings.execute_max_tokens))
        return {"text": result.text, "latency_ms": result.latency_ms}

    async def _verdict(self, *, task_id: int, subtask_id: int, validator: Candidate, prompt: str,
                       answer: str) -> dict[str, Any]:
        """The validator's structured verdict; malformed twice means unvalidated, with that reason."""
        async with self._read() as reads:
            reviewer = await self._prompts.role(reads, AiRole.REVIEWER)
        messages = [ChatMessage("system", reviewer.system_prompt),
                    ChatMessage("user", f"SUBTASK:\n{prompt}\n\nRESULT:\n{answer}\n\nReview the RESULT "
                                        'critically. Reply with only the JSON object: {"score": 0-100, '
                                        '"verdict": "approve"|"revise"|"reject", "issues": [{"severity": ..., '
                                        '"location": ..., "problem": ..., "fix": ...}], "summary": "..."}')]
        problems = []
        for _ in range(2):
            result = await self._call(task_id=task_id, subtask_id=subtask_id, event="verdict",
                                      choice=_choice_like(validator),
                                      request=ChatRequest(model=validator.key, messages=messages,
                                                          json_schema=_schema(Verdict), temperature=0.0))
            try:
                return parse_output(Verdict, result.text).model_dump()
            except MalformedOutputError as err:
                problems.append(err.detail)
                messages = [*messages, ChatMessage("assistant", result.text[:8000]),
                            ChatMessage("user", f"That verdict is invalid: {err.detail}. Reply with only the JSON.")]
        return {"error": f"the validator {validator.key} returned no valid verdict: {'; '.join(problems)}"[:2000]}

    async def _judge(self, *, task_id: int, subtask_id: int, judge: Candidate, prompt: str, first: str,
                     second: str, review: str) -> dict[str, Any]:
        """One judgement with `first` shown as the RESULT and `second` as the ALTERNATIVE."""
        async with self._read() as reads:
            tiebreaker = await self._prompts.role(reads, AiRole.TIEBREAKER)
        messages = [ChatMessage("system", tiebreaker.system_prompt),
                    ChatMessage("user", f"SUBTASK:\n{prompt}\n\nRESULT:\n{first}\n\nREVIEW:\n{review}\n\n"
                                        f"ALTERNATIVE:\n{second}\n\nWhich is correct and complete: the RESULT "
                                        'or the ALTERNATIVE? Reply with only the JSON object: {"winner": '
                                        '"result"|"review"|"alternative"|"neither", "score": 0-100, '
                                        '"verdict": "approve"|"revise"|"reject", "reasons": ["..."], '
                                        '"merged_result": null}')]
        for _ in range(2):
            result = await self._call(task_id=task_id, subtask_id=subtask_id, event="judge", choice=_choice_like(judge),
                                      request=ChatRequest(model=judge.key, messages=messages,
                                                          json_schema=_schema(Judgement), temperature=0.0))
            try:
                return parse_output(Judgement, result.text).model_dump()
            except MalformedOutputError as err:
                messages = [*messages, ChatMessage("assistant", result.text[:8000]),
                            ChatMessage("user", f"Invalid: {err.detail}. Reply with only the JSON.")]
        return {"winner": "neither", "reasons": ["the judge returned no valid judgement twice"]}

    async def _call(self, *, task_id: int, subtask_id: int | None, event: str, choice: Choice,
                    request: ChatRequest) -> ChatResult:
        """One routed call, logged with prompt, answer, tokens and timing."""
        prompt = "\n\n".join(f"[{m.role}] {m.content}" for m in request.messages)
        current_work.set((task_id, subtask_id))
        try:
            with self._busy(request.model):
                result = await self._router.chat(request)
        except ProviderError as err:
            await self._log(task_id, subtask_id, choice, f"{event}.failed", level=LogLevel.ERROR, prompt=prompt,
                            details={"error": str(err)})
            raise
        await self._log(task_id, subtask_id, choice, event, prompt=prompt, response=result.text,
                        latency_ms=result.latency_ms,
                        tokens={"prompt_tokens": result.usage.prompt_tokens,
                                "completion_tokens": result.usage.completion_tokens},
                        details={"provider": result.provider, "ttft_ms": result.time_to_first_token_ms})
        return result

    # -- bookkeeping --------------------------------------------------------------------------

    def _busy(self, model: str) -> contextlib.ExitStack[bool | None]:
        """Tell the monitor a model is in use on every provider that may serve it (never unloaded)."""
        stack = contextlib.ExitStack()
        if self._monitor_state is not None:
            for deployment in self._router.deployments(model):
                stack.enter_context(self._monitor_state.using_model(deployment.provider.name, deployment.model))
        return stack

    def _ready_jobs(self, task_id: int, subtasks: Sequence[Any]) -> tuple[list[Any], list[JobSpec]]:
        """The pending subtasks whose dependencies are done, and the jobs to queue (the finish when all ended)."""
        done = {s.seq for s in subtasks if s.status == SubtaskStatus.COMPLETED}
        ready = [s for s in subtasks if s.status == SubtaskStatus.PENDING and set(s.depends_on) <= done]
        specs = [JobSpec(kind=KIND_SUBTASK, idempotency_key=f"subtask:{s.id}:run", payload={"subtask_id": s.id},
                         priority=s.priority, task_id=task_id, subtask_id=s.id,
                         max_attempts=self._settings.max_attempts, timeout_s=self._settings.subtask_timeout_s)
                 for s in ready]
        if not ready and all(s.status in TERMINAL_SUBTASK for s in subtasks):
            specs.append(JobSpec(kind=KIND_FINISH, idempotency_key=f"task:{task_id}:finish",
                                 payload={"task_id": task_id}, task_id=task_id,
                                 max_attempts=self._settings.max_attempts))
        return ready, specs

    async def _enqueue_ready(self, session: AsyncSession, task_id: int, subtasks: list[Subtask]) -> None:
        ready, specs = self._ready_jobs(task_id, subtasks)
        for subtask in ready:
            subtask.status = SubtaskStatus.QUEUED
        if specs:
            await self._queue.enqueue_in(session, specs)

    async def _schedule_after(self, session: AsyncSession, finished: Subtask) -> None:
        await session.flush()
        await self._schedule_task(session, finished.task_id)

    async def _schedule_task(self, session: AsyncSession, task_id: int) -> None:
        await self._schedule_tasks(session, [task_id])

    async def _schedule_tasks(self, session: AsyncSession, task_ids: Sequence[int]) -> None:
        """Queue the tasks' subtasks that became ready, and the finish of tasks whose subtasks all ended.

        Core rows and one statement each for many tasks: this runs in every group commit of successes.
        """
        if not task_ids:
            return
        by_task: dict[int, list[Any]] = {}
        for row in await session.execute(_SIBLINGS, {"b_tasks": list(task_ids)}):
            by_task.setdefault(int(row.task_id), []).append(row)
        ready: list[Any] = []
        specs: list[JobSpec] = []
        for task_id, siblings in by_task.items():
            task_ready, task_specs = self._ready_jobs(task_id, siblings)
            ready.extend(task_ready)
            specs.extend(task_specs)
        if ready:
            await execute_dml(session, _MARK_QUEUED, [{"b_id": s.id} for s in ready])
        if specs:
            await self._queue.enqueue_in(session, specs)

    async def _record_finished(self, session: AsyncSession, items: list[_Finished]) -> None:
        """Subtask rows, quality metrics and dependants' jobs of the subtasks finished in one group commit.

        One executemany per statement for the whole group. A subtask cancelled meanwhile matches
        nothing; executemany reports only the total, so then every row is written again on its own
        (the same values: harmless) to learn which ones count.
        """
        written = await execute_dml(session, _RECORD_RESULT, [item.params for item in items])
        matched = items
        if written.rowcount != len(items):
            matched = [item for item in items
                       if (await execute_dml(session, _RECORD_RESULT, item.params)).rowcount == 1]
        await record_outcomes(session, [outcome for item in matched for outcome in item.outcomes])
        finished = [item for item in matched if item.alone and not item.waiting]
        if finished:
            await execute_dml(session, _TASK_DONE, [{"b_id": item.task_id, "b_result": item.params["b_result"],
                                                "b_finished": item.params["b_finished"]} for item in finished])
            for item in finished:  # published once the job's success is committed (a retried group overwrites)
                self._tasks_done[item.job_id] = (item.task_id, str(item.params["b_result"]))
        await self._schedule_tasks(session, sorted({item.task_id for item in matched
                                                    if not item.waiting and not item.alone}))

    async def _fail_task(self, task_id: int, reason: str) -> None:
        async with self._queue.session() as session:
            task = await session.get(Task, task_id)
            if task is None or task.status in (TaskStatus.CANCELLED, TaskStatus.COMPLETED):
                return
            task.status = TaskStatus.FAILED
            task.error = reason[:4000]
            task.finished_at = utcnow()
        log.warning("task failed", task_id=task_id, reason=reason[:500])
        self._publish("task.failed", task_id, {"error": reason})

    async def _job_dead(self, event: QueueEvent) -> None:
        job = await self._queue.get(event.job_id)
        reason = f"{event.kind} gave up after {event.attempt} attempts: {job.error or event.detail}"
        if job.task_id is None:
            return
        if job.subtask_id is not None:
            async with self._queue.session() as session:
                await session.execute(update(Subtask).where(Subtask.id == job.subtask_id).values(
                    status=SubtaskStatus.FAILED, error=reason[:4000], finished_at=utcnow()))
        await self._fail_task(job.task_id, reason)

    def _log_choice(self, task_id: int, subtask_id: int | None, role: str, choice: Choice | dict[str, Any]) -> None:
        reason = choice.reason if isinstance(choice, Choice) else str(choice.get("reason"))
        log.info("model chosen", task_id=task_id, subtask_id=subtask_id, role=role, reason=reason)

    async def _log(self, task_id: int, subtask_id: int | None, choice: Choice, event: str, *,
                   level: LogLevel = LogLevel.INFO, prompt: str | None = None, response: str | None = None,
                   latency_ms: float | None = None, tokens: dict[str, Any] | None = None,
                   details: dict[str, Any] | None = None) -> None:
        """One row of execution_logs, secrets redacted; logging never fails the work.

        Inside a job the row rides the job's next durable write (the step whose call it logs, or
        the attempt's failure), so a step costs one transaction, not one per row.
        """
        tokens = tokens or {}
        row = {
            "task_id": task_id, "subtask_id": subtask_id, "model_id": choice.candidate.model_id,
            "provider_id": choice.candidate.provider_id, "level": level, "event": event[:64],
            "prompt": redact_text(prompt[:MAX_LOGGED_CHARS]) if prompt else None,
            "response": redact_text(response[:MAX_LOGGED_CHARS]) if response else None,
            "prompt_tokens": tokens.get("prompt_tokens"), "completion_tokens": tokens.get("completion_tokens"),
            "latency_ms": int(latency_ms) if latency_ms is not None else None,
            # Serialised once, here (anything JSON cannot hold as its text); stored as this text.
            "details": JSONText(json.dumps({"model": choice.candidate.key, **(details or {})}, default=str)),
            "created_at": utcnow(),
        }
        if defer_write(PendingWrite(_INSERT_LOG, row)):
            return
        try:
            async with self._queue.session() as session:
                await session.execute(_INSERT_LOG, row)
        except Exception:  # boundary: a failed log write is reported, the model's work is kept
            log.exception("could not write an execution log row", task_id=task_id, event_name=event)

    def _publish_after_commit(self, ctx: JobContext, kind: str, task_id: int, payload: dict[str, Any]) -> None:
        """Publish once the job's result is committed, so listeners reading the rows see it."""
        if self._bus is not None:
            event = Event(topic="task", kind=kind, task_id=task_id, payload=payload)
            self._after_commit.setdefault(ctx.job.id, []).append(event)

    def _publish(self, kind: str, task_id: int, payload: dict[str, Any]) -> None:
        if self._bus is not None:
            self._bus.publish(Event(topic="task", kind=kind, task_id=task_id, payload=payload))


_T = TypeVar("_T")
# MariaDB/MySQL: deadlock, lock wait timeout. InnoDB rolled the whole transaction back, so running
# it again is safe (a submit's rows and jobs are written together or not at all).
_RETRYABLE_LOCK_ERRORS = (1213, 1205)


async def _retry_deadlocks(operation: Callable[[], Awaitable[_T]], *, attempts: int = 4) -> _T:
    """Run a write transaction again when InnoDB picked it as a deadlock victim (expected under load:
    a submit's inserts and the workers' claims and group commits touch the same indexes)."""
    attempt = 1
    while True:
        try:
            return await operation()
        except DBAPIError as err:
            code = getattr(err.orig, "args", (None,))[0] if err.orig is not None else None
            if attempt >= attempts or code not in _RETRYABLE_LOCK_ERRORS:
                raise
            log.warning("write retried after a lock conflict", attempt=attempt, error=str(err.orig)[:200])
            await asyncio.sleep(0.005 * 2**attempt)
            attempt += 1


@functools.cache
def _schema(model: type[Verdict] | type[Judgement]) -> dict[str, Any]:
    """Structured-output schemas are built once (pydantic's schema generation is not cheap)."""
    return json_schema(model)


def _candidate(data: dict[str, Any]) -> Candidate:
    return Candidate(model_id=int(data["model_id"]), key=str(data["key"]), family=str(data["family"]),
                     provider_id=int(data["provider_id"]), provider_name=str(data["provider"]),
                     is_local=bool(data["is_local"]), is_loaded=bool(data["is_loaded"]),
                     size_bytes=data.get("size_bytes"))


def _choice_like(candidate: Candidate) -> Choice:
    return Choice(candidate=candidate, score=0.0, reason="")


def _tiebreak_result(outcome: str | None, *, side: str) -> Literal["won", "lost"] | None:
    """Whether `side` won or lost a decided tie-break (None when there was none or it tied)."""
    if outcome not in ("executor", "validator"):
        return None
    return "won" if outcome == side else "lost"


def _pick(winner: Any, *, executor_shown: str) -> str:
    """Map a judgement's result/alternative to executor/validator given where the executor was shown."""
    if winner not in ("result", "alternative"):
        return "tie"
    return "executor" if winner == executor_shown else "validator"


def _plan_request(request_text: str) -> str:
    return f"TASK:\n{request_text}\n\nReply with only the JSON plan."


def _subtask_prompt(task_title: str, task_description: str | None, subtask: Any, context: str) -> str:
    """The executor's request; `subtask` is a Subtask or a row with its seq, title, description, expected output."""
    parts = [f"Overall task: {task_title}"]
    if task_description:
        parts.append(task_description)
    parts.append(f"Your subtask ({subtask.seq}): {subtask.title}\n{subtask.description}")
    if subtask.expected_output:
        parts.append(f"Expected output: {subtask.expected_output}")
    if context:
        parts.append(f"Results of the subtasks this one depends on:\n{context}")
    parts.append("Do the subtask completely. Do not summarise or skip parts.")
    return "\n\n".join(parts)


async def _dependency_context(reads: Reads, task_id: int, depends_on: Sequence[int]) -> str:
    if not depends_on:
        return ""
    rows = await reads.execute(
        select(SUBTASKS.c.seq, SUBTASKS.c.title, SUBTASKS.c.result)
        .where(SUBTASKS.c.task_id == task_id, SUBTASKS.c.seq.in_(list(depends_on))).order_by(SUBTASKS.c.seq))
    return "\n\n".join(f"[{row.seq}. {row.title}]\n{row.result or ''}" for row in rows)
