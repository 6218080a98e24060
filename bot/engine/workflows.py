"""Workflows run as tasks whose plan is the workflow's stored steps, not a planner model's guess.

A workflow (`ai_workflows.definition = {"steps": [...]}`) names its steps; each is done by a prompt
template (rendered with the run's input) or by a specialised AI, and may depend on other steps.
Running one creates a task with `workflow_id` set (`new_workflow_task`, shared by `Engine.submit`
and the admin API); its `task.plan` job turns each step into a subtask here — category,
dependencies, expected output — without calling a model. The steps are checked both when the run
is created (so a bad run is refused at once) and when it is planned (the definition may have
changed): a duplicate or unknown step name, a dependency cycle, a missing or inactive template or
specialised AI, or a template variable the input does not supply fails the task with that reason.

The run's input is free text, available to templates as `{input}`; when it is a JSON object its
keys are template variables too (`{"topic": "backups", "audience": "ops"}`).

WorkflowError (bot.errors.OrchestratorError)   the workflow cannot run as stored, or with this input
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.base import utcnow
from bot.db.models import AiRole, AiTemplate, AiWorkflow, SpecializedAi, Subtask, SubtaskStatus, Task, TaskStatus
from bot.engine.prompts import CATEGORY_ROLES, PromptError, render_template
from bot.engine.schemas import CATEGORIES, CATEGORY_ALIASES
from bot.errors import OrchestratorError

MAX_STEPS = 100
MAX_INPUT_CHARS = 100_000
# The category a specialised AI's steps run under when it names none: the first category served by its role.
ROLE_CATEGORIES: dict[AiRole, str] = {}
for _name, _role in CATEGORY_ROLES.items():
    ROLE_CATEGORIES.setdefault(_role, _name)


class WorkflowError(OrchestratorError):
    """A workflow cannot run as stored or with this input; the message says which step and why."""


@dataclass(frozen=True, slots=True)
class WorkflowStepPlan:
    """One step as the subtask it becomes (`seq` is its position in the definition, from 1)."""

    seq: int
    name: str
    description: str
    category: str
    depends_on: tuple[int, ...]
    expected_output: str
    specialized_ai_id: int | None


@dataclass(frozen=True, slots=True)
class WorkflowPlan:
    """A workflow's steps for one run, in the order the definition lists them."""

    workflow_id: int
    name: str
    version: int
    steps: tuple[WorkflowStepPlan, ...]

    @property
    def planner(self) -> str:
        """Who made the plan, where a planner model's name would appear (chat, events)."""
        return f"workflow {self.name} v{self.version}"

    def event_payload(self) -> dict[str, Any]:
        """The `task.planned` payload, shaped like a planner's so every listener renders it the same way."""
        return {
            "planner": self.planner, "workflow_id": self.workflow_id, "workflow_version": self.version,
            "subtasks": [{"id": s.seq, "title": s.name, "description": s.description, "category": s.category,
                          "depends_on": list(s.depends_on), "priority": 0, "expected_output": s.expected_output}
                         for s in self.steps],
        }


def run_variables(input_text: str) -> dict[str, str]:
    """Template variables from a run's input: `input` always, plus a JSON object's keys."""
    variables = {"input": input_text}
    stripped = input_text.strip()
    if stripped.startswith("{"):
        try:
            decoded = json.loads(stripped)
        except ValueError:
            return variables
        if isinstance(decoded, dict):
            for key, value in decoded.items():
                variables[str(key)] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return variables


def _category(value: Any) -> str | None:
    """A known subtask category (aliases mapped), or None when `value` names none."""
    if not value:
        return None
    text = str(value).strip().lower()
    text = CATEGORY_ALIASES.get(text, text)
    return text if text in CATEGORIES else None


def _steps_of(workflow: AiWorkflow) -> list[dict[str, Any]]:
    definition = workflow.definition if isinstance(workflow.definition, dict) else {}
    steps = definition.get("steps")
    if not isinstance(steps, list) or not steps:
        raise WorkflowError(f"workflow {workflow.name!r} has no steps")
    if len(steps) > MAX_STEPS:
        raise WorkflowError(f"workflow {workflow.name!r} has {len(steps)} steps; at most {MAX_STEPS} can run")
    for index, step in enumerate(steps, start=1):
        if not isinstance(step, dict) or not isinstance(step.get("name"), str) or not step["name"].strip():
            raise WorkflowError(f"workflow {workflow.name!r}: step {index} has no name")
        depends = step.get("depends_on", [])
        if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
            raise WorkflowError(f"workflow {workflow.name!r}: step {step['name']!r} has a malformed depends_on")
    return steps


def check_graph(workflow_name: str, steps: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Step name → seq after checking names are unique, dependencies known, and there is no cycle."""
    seqs: dict[str, int] = {}
    for index, step in enumerate(steps, start=1):
        if step["name"] in seqs:
            raise WorkflowError(f"workflow {workflow_name!r}: step name {step['name']!r} is used twice")
        seqs[step["name"]] = index
    for step in steps:
        unknown = [dep for dep in step.get("depends_on", []) if dep not in seqs]
        if unknown:
            raise WorkflowError(f"workflow {workflow_name!r}: step {step['name']!r} depends on unknown "
                                f"step(s) {', '.join(map(repr, unknown))}")
    by_name = {step["name"]: step for step in steps}
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join((*path[path.index(name):], name))
            raise WorkflowError(f"workflow {workflow_name!r} has a dependency cycle: {cycle}")
        state[name] = 1
        for dep in by_name[name].get("depends_on", []):
            visit(dep, (*path, name))
        state[name] = 2

    for step in steps:
        visit(step["name"], ())
    return seqs


async def plan_workflow(session: AsyncSession, workflow: AiWorkflow, *, input_text: str) -> WorkflowPlan:
    """The subtasks one run of `workflow` becomes; WorkflowError says why it cannot run."""
    steps = _steps_of(workflow)
    seqs = check_graph(workflow.name, steps)
    variables = run_variables(input_text)
    planned = [await _plan_step(session, workflow.name, step, seq=seqs[step["name"]], seqs=seqs,
                                variables=variables) for step in steps]
    return WorkflowPlan(workflow_id=workflow.id, name=workflow.name, version=workflow.version,
                        steps=tuple(planned))


async def _plan_step(session: AsyncSession, workflow_name: str, step: Mapping[str, Any], *, seq: int,
                     seqs: Mapping[str, int], variables: Mapping[str, str]) -> WorkflowStepPlan:
    where = f"workflow {workflow_name!r}, step {step['name']!r}"
    instructions = str(step.get("instructions") or "").strip()
    template_id, ai_id = step.get("template_id"), step.get("specialized_ai_id")
    parts: list[str] = []
    category = _category(step.get("category"))
    if template_id is not None:
        template = await session.get(AiTemplate, template_id) if isinstance(template_id, int) else None
        if template is None:
            raise WorkflowError(f"{where}: template {template_id} does not exist")
        try:
            rendered, template_category = await render_template(session, name=template.name, variables=variables)
        except PromptError as err:
            raise WorkflowError(f"{where}: {err.message}") from err
        parts.append(rendered)
        category = category or _category(template_category)
        ai_id = ai_id if ai_id is not None else template.specialized_ai_id
    elif ai_id is None:
        raise WorkflowError(f"{where} names neither a template nor a specialised AI")
    if ai_id is not None:
        ai = await session.get(SpecializedAi, ai_id) if isinstance(ai_id, int) else None
        if ai is None or not ai.is_active:
            raise WorkflowError(f"{where}: specialised AI {ai_id} does not exist or is switched off")
        category = category or _category(ai.category) or ROLE_CATEGORIES.get(AiRole(ai.role))
    if instructions:
        parts.append(instructions)
    if not parts:
        raise WorkflowError(f"{where} has neither a template nor instructions: there is nothing to do")
    expected = str(step.get("expected_output") or "").strip()
    return WorkflowStepPlan(
        seq=seq, name=str(step["name"])[:255], description="\n\n".join(parts), category=category or "general",
        depends_on=tuple(sorted(seqs[dep] for dep in step.get("depends_on", []))), expected_output=expected,
        specialized_ai_id=ai_id if isinstance(ai_id, int) else None,
    )


async def active_workflow(session: AsyncSession, workflow_id: int) -> AiWorkflow:
    """The workflow to run; WorkflowError when it does not exist or is switched off."""
    workflow = await session.get(AiWorkflow, workflow_id)
    if workflow is None:
        raise WorkflowError(f"there is no workflow {workflow_id}")
    if not workflow.is_active:
        raise WorkflowError(f"workflow {workflow.name!r} is switched off")
    return workflow


async def new_workflow_task(session: AsyncSession, *, workflow_id: int, input_text: str = "", title: str | None = None,
                            user_id: int | None = None, priority: int = 0, origin: Mapping[str, Any] | None = None,
                            idempotency_key: str | None = None) -> Task:
    """A pending task that runs `workflow_id` with `input_text`, checked first (added, not committed).

    Both `Engine.submit` and `POST /workflows/{id}/execute` create runs here, so a run is checked
    and recorded the same way whoever starts it; the caller queues its planning job.
    """
    if len(input_text) > MAX_INPUT_CHARS:
        raise WorkflowError(f"the input is longer than {MAX_INPUT_CHARS:,} characters")
    workflow = await active_workflow(session, workflow_id)
    plan = await plan_workflow(session, workflow, input_text=input_text)  # refuse now what would fail later
    label = (title or workflow.name).strip() or workflow.name
    task = Task(
        title=label[:255], description=input_text, user_id=user_id, priority=priority, workflow_id=workflow.id,
        status=TaskStatus.PENDING, idempotency_key=idempotency_key,
        origin={**(origin or {}), "workflow": {"id": workflow.id, "name": workflow.name, "version": plan.version}},
    )
    session.add(task)
    await session.flush()
    return task


async def workflow_plan_for(sessions: async_sessionmaker[AsyncSession], task_id: int) -> WorkflowPlan | None:
    """The plan of a workflow run being planned (the task marked planning); None for any other task.

    Raises WorkflowError when the run cannot go ahead — including when its workflow was deleted
    after the run was created, which would otherwise leave the input to a planner model.
    """
    async with sessions() as session, session.begin():
        task = await session.get(Task, task_id)
        if task is None or task.status == TaskStatus.CANCELLED:
            return None
        recorded = (task.origin or {}).get("workflow")
        if task.workflow_id is None:
            if isinstance(recorded, dict):
                raise WorkflowError(f"workflow {recorded.get('name')!r} was deleted before this run was planned")
            return None
        workflow = await active_workflow(session, task.workflow_id)
        plan = await plan_workflow(session, workflow, input_text=task.description)
        task.status = TaskStatus.PLANNING
        task.started_at = task.started_at or utcnow()
    return plan


async def write_workflow_subtasks(session: AsyncSession, task_id: int, plan: WorkflowPlan, *,
                                  max_attempts: int) -> list[Subtask]:
    """The run's subtask rows (none when the task was cancelled or already has them); the task runs."""
    task = await session.get(Task, task_id)
    if task is None or task.status == TaskStatus.CANCELLED:
        return []
    if await session.scalar(select(Subtask.id).where(Subtask.task_id == task_id).limit(1)) is not None:
        return []
    rows = [Subtask(task_id=task_id, seq=step.seq, title=step.name, description=step.description,
                    category=step.category, depends_on=list(step.depends_on), priority=task.priority,
                    expected_output=step.expected_output or None, specialized_ai_id=step.specialized_ai_id,
                    status=SubtaskStatus.PENDING, max_attempts=max_attempts,
                    idempotency_key=f"task:{task_id}:subtask:{step.seq}")
            for step in plan.steps]
    session.add_all(rows)
    await session.flush()
    task.status = TaskStatus.RUNNING
    return rows
