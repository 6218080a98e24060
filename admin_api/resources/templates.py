"""Prompt templates, workflows (run as tasks) and standing instructions."""

from __future__ import annotations

import string
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, field_validator, model_validator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.endpoint import Ctx, Reply, endpoint
from admin_api.problems import Conflict, NotFound, ReferenceNotFound, ValidationFailed
from admin_api.resource import ApiModel, Filter, Resource, check_references, commit_or_conflict, crud_routes, get_row
from admin_api.resources._common import Id, JsonObject, Key, LongText, Name, Priority, ShortKey, Text, Timestamps
from admin_api.resources.tasks import TASKS, TaskRead, start_planning
from admin_api.state import SESSIONS
from bot.db.models import AiTemplate, AiWorkflow, Instruction, InstructionScope
from bot.engine.workflows import WorkflowError, new_workflow_task

routes = web.RouteTableDef()


def _check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        raise ValueError(f"not a valid JSON Schema: {err.message}") from None
    if schema and schema.get("type", "object") != "object":
        raise ValueError("the variables schema must describe an object")
    return schema


VariablesSchema = Annotated[JsonObject, Field(description="JSON Schema (object) the variables must satisfy")]


class TemplateCreate(ApiModel):
    """A prompt with {variables}."""

    name: Name
    category: ShortKey | None = None
    description: Text = ""
    body: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    variables: VariablesSchema = Field(default_factory=dict)
    specialized_ai_id: Id | None = None
    is_active: bool = True

    _schema = field_validator("variables")(_check_json_schema)

    @model_validator(mode="after")
    def _placeholders_declared(self) -> TemplateCreate:
        _check_placeholders(self.body, self.variables)
        return self


def _check_placeholders(body: str, variables: dict[str, Any]) -> None:
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(body) if field}
    except ValueError as err:
        raise ValueError(f"the body is not a valid template: {err}") from None
    declared = set((variables or {}).get("properties", {}))
    if variables and names - declared:
        raise ValueError(f"placeholders not declared in variables: {', '.join(sorted(names - declared))}")


class TemplateUpdate(ApiModel):
    """Fields to change."""

    name: Name | None = None
    category: ShortKey | None = None
    description: Text | None = None
    body: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None
    variables: VariablesSchema | None = None
    specialized_ai_id: Id | None = None
    is_active: bool | None = None

    @field_validator("variables")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _check_json_schema(value)


class TemplateRead(Timestamps):
    """A template as stored."""

    name: str
    category: str | None
    description: str
    body: str
    variables: dict[str, object]
    specialized_ai_id: int | None
    is_active: bool


async def _template_consistent(ctx: Ctx, session: AsyncSession, values: dict[str, Any], row: Any) -> dict[str, Any]:
    if row is not None and ("body" in values or "variables" in values):
        try:
            _check_placeholders(values.get("body", row.body), values.get("variables", row.variables))
        except ValueError as err:
            raise ValidationFailed(str(err), extra={"errors": [
                {"loc": ["body", "body"], "msg": str(err), "type": "value_error"}]}) from None
    return values


TEMPLATES = Resource(
    name="templates", tag="templates", model=AiTemplate, read=TemplateRead, create=TemplateCreate,
    update=TemplateUpdate, prepare=_template_consistent, sort_fields=("id", "name", "created_at"),
    filters={"category": Filter("category", str), "is_active": Filter("is_active", bool),
             "specialized_ai_id": Filter("specialized_ai_id", int)},
)
crud_routes(TEMPLATES, routes)


class WorkflowStep(ApiModel):
    """One step: a template or a specialised AI does it; `depends_on` names earlier steps."""

    name: ShortKey
    template_id: Id | None = None
    specialized_ai_id: Id | None = None
    instructions: Text = ""
    depends_on: Annotated[list[ShortKey], Field(max_length=100)] = Field(default_factory=list)
    category: ShortKey | None = Field(default=None, description="subtask category; default: the template's or AI's")
    expected_output: Text = ""

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str | None) -> str | None:
        from bot.engine.schemas import CATEGORIES, CATEGORY_ALIASES

        if value is None:
            return None
        lowered = CATEGORY_ALIASES.get(value.lower(), value.lower())
        if lowered not in CATEGORIES:
            raise ValueError(f"unknown category; use one of: {', '.join(CATEGORIES)}")
        return lowered

    @model_validator(mode="after")
    def _one_doer(self) -> WorkflowStep:
        if (self.template_id is None) == (self.specialized_ai_id is None):
            raise ValueError("a step names exactly one of template_id or specialized_ai_id")
        return self


class WorkflowDefinition(ApiModel):
    """The steps of a workflow, in order."""

    steps: Annotated[list[WorkflowStep], Field(min_length=1, max_length=100)]

    @model_validator(mode="after")
    def _graph(self) -> WorkflowDefinition:
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"step name {step.name!r} is used twice")
            unknown = [dep for dep in step.depends_on if dep not in seen]
            if unknown:
                raise ValueError(f"step {step.name!r} depends on steps not before it: {', '.join(unknown)}")
            seen.add(step.name)
        return self


class WorkflowCreate(ApiModel):
    """A new workflow."""

    name: Name
    description: Text = ""
    definition: WorkflowDefinition
    is_active: bool = True


class WorkflowUpdate(ApiModel):
    """Fields to change; a new definition bumps the version."""

    name: Name | None = None
    description: Text | None = None
    definition: WorkflowDefinition | None = None
    is_active: bool | None = None


class WorkflowRead(Timestamps):
    """A workflow as stored."""

    name: str
    description: str
    definition: dict[str, object]
    version: int
    is_active: bool


async def _check_steps(ctx: Ctx, session: AsyncSession, values: dict[str, Any], row: Any) -> dict[str, Any]:
    definition = values.get("definition")
    if definition is None:
        return values
    for step in definition["steps"]:
        try:
            await check_references(session, TEMPLATES, {"specialized_ai_id": step.get("specialized_ai_id")})
        except ReferenceNotFound as err:
            raise ReferenceNotFound(f"step {step['name']!r}: {err.detail}", extra=err.extra) from None
        if step.get("template_id") is not None and await session.get(AiTemplate, step["template_id"]) is None:
            raise ReferenceNotFound(f"step {step['name']!r}: template {step['template_id']} does not exist",
                                    extra={"missing": [{"field": "template_id", "id": step["template_id"],
                                                        "resource": "ai_templates"}]})
    if row is not None:
        values["version"] = row.version + 1
    return values


WORKFLOWS = Resource(
    name="workflows", tag="workflows", model=AiWorkflow, read=WorkflowRead, create=WorkflowCreate,
    update=WorkflowUpdate, prepare=_check_steps, sort_fields=("id", "name", "created_at"),
    filters={"is_active": Filter("is_active", bool)},
)


class WorkflowExecute(ApiModel):
    """Run a workflow as a new task."""

    title: Key | None = None
    input: LongText = ""
    priority: Priority = 0
    idempotency_key: Key | None = None


@endpoint(routes, "POST", "/workflows/{id}/execute", summary="Run a workflow as a new task",
          tag="workflows", scope="write", body=WorkflowExecute, response=TaskRead, status=201,
          problems=(NotFound, Conflict, ValidationFailed),
          description="The engine plans the task from the workflow's steps (no planner model): each step "
                      "becomes a subtask; templates are rendered with the input ({input}, or the keys of "
                      "a JSON object input). A run that cannot go ahead is refused with 422.")
async def execute_workflow(ctx: Ctx) -> Reply:
    """Create the task the engine will plan from the workflow's steps, and announce it."""
    request = ctx.body_as(WorkflowExecute)
    async with ctx.request.app[SESSIONS]() as session:
        workflow = await get_row(session, WORKFLOWS, ctx.path_int())
        if not workflow.is_active:
            raise Conflict("the workflow is not active")
        try:  # the same checks and row as a run started from chat (bot/engine/workflows.py)
            task = await new_workflow_task(
                session, workflow_id=workflow.id, input_text=request.input, title=request.title,
                user_id=ctx.user_id, priority=request.priority, origin={"platform": "api"},
                idempotency_key=request.idempotency_key,
            )
        except WorkflowError as err:
            raise ValidationFailed(f"the workflow cannot run: {err.message}", extra={"errors": [
                {"loc": ["body", "input"], "msg": err.message, "type": "workflow_error"}]}) from None
        except IntegrityError:
            await session.rollback()
            raise Conflict("the task conflicts with an existing row (the idempotency key is taken)") from None
        await commit_or_conflict(session, "task")
        await session.refresh(task)
    await start_planning(ctx, task)
    return Reply(TASKS.serialise(task), status=201, headers={"Location": f"/tasks/{task.id}"})


crud_routes(WORKFLOWS, routes)


class InstructionCreate(ApiModel):
    """A standing instruction: global, for a category, or for one task."""

    scope: InstructionScope = InstructionScope.GLOBAL
    category: ShortKey | None = None
    task_id: Id | None = None
    text: Annotated[str, Field(min_length=1, max_length=65_535)]
    priority: Priority = 0
    is_active: bool = True

    @model_validator(mode="after")
    def _scope_target(self) -> InstructionCreate:
        _check_scope(self.scope, self.category, self.task_id)
        return self


def _check_scope(scope: InstructionScope | str, category: str | None, task_id: int | None) -> None:
    if scope == InstructionScope.CATEGORY and not category:
        raise ValueError("a category instruction needs a category")
    if scope == InstructionScope.TASK and task_id is None:
        raise ValueError("a task instruction needs a task_id")
    if scope == InstructionScope.GLOBAL and (category or task_id is not None):
        raise ValueError("a global instruction has neither category nor task_id")


class InstructionUpdate(ApiModel):
    """Fields to change."""

    text: Annotated[str, Field(min_length=1, max_length=65_535)] | None = None
    priority: Priority | None = None
    is_active: bool | None = None


class InstructionRead(Timestamps):
    """An instruction as stored."""

    scope: InstructionScope
    category: str | None
    task_id: int | None
    text: str
    priority: int
    is_active: bool


INSTRUCTIONS = Resource(
    name="instructions", tag="instructions", model=Instruction, read=InstructionRead,
    create=InstructionCreate, update=InstructionUpdate, sort_fields=("id", "priority", "created_at"),
    filters={"scope": Filter("scope", InstructionScope), "category": Filter("category", str),
             "task_id": Filter("task_id", int), "is_active": Filter("is_active", bool)},
)
crud_routes(INSTRUCTIONS, routes)
