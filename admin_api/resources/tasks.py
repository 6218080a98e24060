"""Tasks and their subtasks; stats, cancel and retry act on the durable queue too."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.endpoint import Ctx, endpoint
from admin_api.problems import Conflict, NotFound, ValidationFailed
from admin_api.resource import ApiModel, Filter, Resource, crud_routes, get_row
from admin_api.resources._common import Id, Key, LongText, Priority, ShortKey, Text, Timestamps
from admin_api.state import BUS, SERVICES, SESSIONS
from bot.db.base import utcnow
from bot.db.models import Subtask, SubtaskStatus, Task, TaskStatus
from bot.events import Event

TERMINAL = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
SUBTASK_DONE = (SubtaskStatus.COMPLETED, SubtaskStatus.FAILED, SubtaskStatus.SKIPPED, SubtaskStatus.CANCELLED)


class Origin(ApiModel):
    """Where a task came from and where its answers go."""

    platform: Annotated[str, Field(max_length=32)] = "api"
    channel_id: Annotated[str, Field(max_length=255)] | None = None
    thread_id: Annotated[str, Field(max_length=255)] | None = None
    message_id: Annotated[str, Field(max_length=255)] | None = None


class TaskCreate(ApiModel):
    """A new task; the engine plans it."""

    title: Key
    description: LongText = ""
    priority: Priority = 0
    category: ShortKey | None = None
    template_id: Id | None = None
    workflow_id: Id | None = None
    conversation_id: Id | None = None
    deadline_at: AwareDatetime | None = None
    idempotency_key: Key | None = None
    origin: Origin = Field(default_factory=Origin)


class TaskUpdate(ApiModel):
    """Fields an operator may change while the task waits."""

    title: Key | None = None
    description: LongText | None = None
    priority: Priority | None = None
    category: ShortKey | None = None
    deadline_at: AwareDatetime | None = None


class TaskRead(Timestamps):
    """A task and where it stands."""

    user_id: int | None
    title: str
    description: str
    status: TaskStatus
    priority: int
    category: str | None
    template_id: int | None
    workflow_id: int | None
    conversation_id: int | None
    result: str | None
    error: str | None
    idempotency_key: str | None
    origin: dict[str, object]
    deadline_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


async def _own_task(ctx: Ctx, session: AsyncSession, values: dict[str, Any], row: Any) -> dict[str, Any]:
    if row is None:
        values["user_id"] = ctx.user_id
        values["status"] = TaskStatus.PENDING
    return values


async def start_planning(ctx: Ctx, task: Any) -> None:
    """Queue the engine's planning job for a new task (what the engine's own submit does)."""
    from bot.engine.orchestrator import KIND_PLAN
    from bot.engine.queue import JobSpec

    await _queue(ctx).enqueue(JobSpec(kind=KIND_PLAN, idempotency_key=f"task:{task.id}:plan",
                                      payload={"task_id": task.id}, priority=task.priority, task_id=task.id))
    ctx.request.app[BUS].publish(Event(topic="task", kind="task.created", task_id=task.id,
                                       payload={"title": task.title}))


TASKS = Resource(
    name="tasks", tag="tasks", model=Task, read=TaskRead, create=TaskCreate, update=TaskUpdate,
    prepare=_own_task, after_create=start_planning, sort_fields=("id", "created_at", "priority"),
    filters={
        "status": Filter("status", TaskStatus),
        "category": Filter("category", str),
        "user_id": Filter("user_id", int),
        "workflow_id": Filter("workflow_id", int),
        "since": Filter("created_at", datetime, "ge"),
        "until": Filter("created_at", datetime, "le"),
    },
)
routes = web.RouteTableDef()


class TaskStats(BaseModel):
    """Counts by status and category, and how long finished tasks took."""

    total: int
    by_status: dict[str, int]
    by_category: dict[str, int]
    finished: int
    mean_duration_s: float | None
    jobs_by_status: dict[str, int]


@endpoint(routes, "GET", "/tasks/stats", summary="Task statistics", tag="tasks", scope="read",
          response=TaskStats)
async def task_stats(ctx: Ctx) -> TaskStats:
    """Aggregate counts straight from the tasks and jobs tables."""
    from bot.db.models.queue import Job

    async with ctx.request.app[SESSIONS]() as session:
        by_status = {str(s.value if hasattr(s, "value") else s): int(n) for s, n in (await session.execute(
            select(Task.status, func.count()).group_by(Task.status))).all()}
        by_category = {str(c) if c is not None else "": int(n) for c, n in (await session.execute(
            select(Task.category, func.count()).group_by(Task.category))).all()}
        finished_rows = (await session.execute(
            select(Task.started_at, Task.finished_at).where(
                Task.finished_at.is_not(None), Task.started_at.is_not(None)))).all()
        jobs = {str(s): int(n) for s, n in (await session.execute(
            select(Job.status, func.count()).group_by(Job.status))).all()}
    durations = [(end - start).total_seconds() for start, end in finished_rows if start and end]
    return TaskStats(
        total=sum(by_status.values()), by_status=by_status, by_category=by_category,
        finished=len(durations), mean_duration_s=sum(durations) / len(durations) if durations else None,
        jobs_by_status=jobs,
    )


def _queue(ctx: Ctx) -> Any:
    """The daemon's durable queue, or one over the same database (the queue is only rows)."""
    queue = ctx.request.app[SERVICES].queue
    if queue is not None:
        return queue
    from bot.engine.queue import JobQueue

    return JobQueue(ctx.request.app[SESSIONS].kw["bind"])


@endpoint(routes, "POST", "/tasks/{id}/cancel", summary="Cancel a task and its queued or running work",
          tag="tasks", scope="write", response=TaskRead, problems=(NotFound, Conflict))
async def cancel_task(ctx: Ctx) -> BaseModel:
    """Mark the task and its unfinished subtasks cancelled and cancel its jobs in the queue."""
    task_id = ctx.path_int()
    async with ctx.request.app[SESSIONS]() as session:
        task = await get_row(session, TASKS, task_id)
        if task.status in TERMINAL:
            raise Conflict(f"the task is already {task.status.value}")
        now = utcnow()
        task.status, task.finished_at = TaskStatus.CANCELLED, now
        await session.execute(update(Subtask).where(
            Subtask.task_id == task_id, Subtask.status.not_in(SUBTASK_DONE)
        ).values(status=SubtaskStatus.CANCELLED, finished_at=now))
        await session.commit()
    jobs = await _queue(ctx).cancel_task(task_id, reason="cancelled through the admin API")
    ctx.request.app[BUS].publish(Event(topic="task", kind="cancelled", task_id=task_id, payload={"jobs": jobs}))
    return TASKS.serialise(task)


@endpoint(routes, "POST", "/tasks/{id}/retry", summary="Retry a failed task's dead-lettered work",
          tag="tasks", scope="write", response=TaskRead, problems=(NotFound, Conflict))
async def retry_task(ctx: Ctx) -> BaseModel:
    """Give the task's dead jobs fresh attempts and put the task and its failed subtasks back in line."""
    from bot.db.models.queue import JOB_DEAD, Job

    task_id = ctx.path_int()
    async with ctx.request.app[SESSIONS]() as session:
        task = await get_row(session, TASKS, task_id)
        if task.status != TaskStatus.FAILED:
            raise Conflict(f"only failed tasks can be retried; this one is {task.status.value}")
        dead = list((await session.execute(
            select(Job.id).where(Job.task_id == task_id, Job.status == JOB_DEAD))).scalars())
    if not dead:
        raise Conflict("the task has no dead-lettered work to retry")
    queue = _queue(ctx)
    retried = [job_id for job_id in dead if await queue.retry_dead(job_id)]
    async with ctx.request.app[SESSIONS]() as session:
        task = await get_row(session, TASKS, task_id)
        task.status, task.error, task.finished_at = TaskStatus.QUEUED, None, None
        await session.execute(update(Subtask).where(
            Subtask.task_id == task_id, Subtask.status == SubtaskStatus.FAILED
        ).values(status=SubtaskStatus.QUEUED, error=None, finished_at=None))
        await session.commit()
    ctx.request.app[BUS].publish(Event(topic="task", kind="retried", task_id=task_id, payload={"jobs": retried}))
    return TASKS.serialise(task)


crud_routes(TASKS, routes)


class SubtaskCreate(ApiModel):
    """A step added to a task's plan by hand."""

    task_id: Id
    seq: Annotated[int, Field(ge=1, le=10_000)]
    title: Key
    description: LongText = ""
    category: ShortKey | None = None
    depends_on: Annotated[list[Annotated[int, Field(ge=1, le=10_000)]], Field(max_length=1000)] = Field(
        default_factory=list)
    priority: Priority = 0
    expected_output: Text | None = None
    specialized_ai_id: Id | None = None
    executor_model_id: Id | None = None
    validator_model_id: Id | None = None
    tiebreaker_model_id: Id | None = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3


class SubtaskUpdate(ApiModel):
    """Fields an operator may change."""

    title: Key | None = None
    description: LongText | None = None
    priority: Priority | None = None
    expected_output: Text | None = None
    specialized_ai_id: Id | None = None
    executor_model_id: Id | None = None
    validator_model_id: Id | None = None
    tiebreaker_model_id: Id | None = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] | None = None


class SubtaskRead(Timestamps):
    """A subtask with its execution, validation and tie-break results."""

    task_id: int
    seq: int
    title: str
    description: str
    category: str | None
    depends_on: list[int]
    status: SubtaskStatus
    priority: int
    expected_output: str | None
    specialized_ai_id: int | None
    executor_model_id: int | None
    validator_model_id: int | None
    tiebreaker_model_id: int | None
    result: str | None
    validation: dict[str, object] | None
    validation_score: float | None
    divergence_pct: float | None
    confidence_score: float | None
    attempts: int
    max_attempts: int
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


async def _check_models(ctx: Ctx, session: AsyncSession, values: dict[str, Any], row: Any) -> dict[str, Any]:
    executor = values.get("executor_model_id", row.executor_model_id if row is not None else None)
    validator = values.get("validator_model_id", row.validator_model_id if row is not None else None)
    if executor is not None and executor == validator:
        raise ValidationFailed("a model never validates its own work", extra={"errors": [
            {"loc": ["body", "validator_model_id"], "msg": "must differ from executor_model_id",
             "type": "value_error"}]})
    if row is None and "depends_on" in values and values["seq"] in values["depends_on"]:
        raise ValidationFailed("a subtask cannot depend on itself", extra={"errors": [
            {"loc": ["body", "depends_on"], "msg": "contains the subtask's own seq", "type": "value_error"}]})
    return values


SUBTASKS = Resource(
    name="subtasks", tag="subtasks", model=Subtask, read=SubtaskRead, create=SubtaskCreate,
    update=SubtaskUpdate, prepare=_check_models, sort_fields=("id", "seq", "created_at"),
    filters={
        "task_id": Filter("task_id", int),
        "status": Filter("status", SubtaskStatus),
        "executor_model_id": Filter("executor_model_id", int),
        "validator_model_id": Filter("validator_model_id", int),
    },
)
crud_routes(SUBTASKS, routes)
