"""/workflows: list and show the stored workflows, and run one as a task with its own thread.

A run is a task whose plan is the workflow's steps (bot/engine/workflows.py): the reply and the
thread are exactly those of /task — the plan, each step's streamed output, each verdict and the
final answer — rendered by the same task-thread code (bot/commands/threads.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.commands._format import clip
from bot.commands.engine_commands import open_task_thread
from bot.commands.errors import CommandError, NotFoundError
from bot.commands.registry import CommandContext, CommandRegistry, Param, Reply
from bot.db.models import AiTemplate, AiWorkflow, SpecializedAi, UserRole
from bot.engine.workflows import WorkflowError

MAX_INPUT_CHARS = 8000
MAX_LISTED = 50


def register(registry: CommandRegistry) -> None:
    """Add /workflows list, show and run."""
    registry.add("workflows list", workflows_list, role=UserRole.VIEWER)
    registry.add("workflows show", workflows_show, role=UserRole.VIEWER, params=[Param("id", kind="int", minimum=1)])
    registry.add("workflows run", workflows_run, role=UserRole.OPERATOR, params=[
        Param("id", kind="int", minimum=1),
        Param("input", kind="text", required=False, max_length=MAX_INPUT_CHARS),
        Param("priority", kind="int", option=True, required=False, default=0, minimum=-100, maximum=100),
    ])
    registry.set_default("workflows", "list")


async def workflows_list(ctx: CommandContext) -> str:
    """List the workflows: number, name, version and how many steps each has."""
    async with ctx.services.session_factory() as session:
        rows = (await session.scalars(select(AiWorkflow).order_by(AiWorkflow.name).limit(MAX_LISTED))).all()
    if not rows:
        return ctx.t("workflows.none")
    lines = [ctx.t("workflows.title", count=len(rows))]
    for workflow in rows:
        state = "" if workflow.is_active else " " + ctx.t("workflows.off")
        lines.append(f"#{workflow.id} `{workflow.name}` v{workflow.version}, "
                     + ctx.t("workflows.steps", count=len(_steps(workflow))) + state
                     + (f" — {clip(workflow.description, 100)}" if workflow.description else ""))
    return "\n".join(lines)


async def workflows_show(ctx: CommandContext) -> str:
    """Show one workflow's steps: who does each, what it depends on and what it should produce."""
    async with ctx.services.session_factory() as session:
        workflow = await session.get(AiWorkflow, ctx.args["id"])
        if workflow is None:
            raise NotFoundError("workflows.not_found", id=ctx.args["id"])
        steps = _steps(workflow)
        template_ids = {s["template_id"] for s in steps if isinstance(s.get("template_id"), int)}
        ai_ids = {s["specialized_ai_id"] for s in steps if isinstance(s.get("specialized_ai_id"), int)}
        templates = {t.id: t.name for t in (await session.scalars(
            select(AiTemplate).where(AiTemplate.id.in_(template_ids)))).all()} if template_ids else {}
        ais = {a.id: a.name for a in (await session.scalars(
            select(SpecializedAi).where(SpecializedAi.id.in_(ai_ids)))).all()} if ai_ids else {}
    lines = [f"#{workflow.id} *{workflow.name}* v{workflow.version}"
             + ("" if workflow.is_active else " " + ctx.t("workflows.off"))]
    if workflow.description:
        lines.append(clip(workflow.description, 500))
    for seq, step in enumerate(steps, start=1):
        if step.get("template_id") is not None:
            doer = ctx.t("workflows.by_template", name=templates.get(step["template_id"], f"#{step['template_id']}"))
        else:
            ai_id = step.get("specialized_ai_id")
            doer = ctx.t("workflows.by_ai", name=ais.get(ai_id, f"#{ai_id}") if isinstance(ai_id, int) else "?")
        line = f"{seq}. `{step.get('name', '?')}` — {doer}"
        depends = step.get("depends_on") or []
        if depends:
            line += " — " + ctx.t("workflows.after", steps=", ".join(map(str, depends)))
        if step.get("category"):
            line += f" [{step['category']}]"
        lines.append(line)
        if step.get("instructions"):
            lines.append(f"   {clip(str(step['instructions']), 200)}")
        if step.get("expected_output"):
            lines.append("   " + ctx.t("workflows.expected", text=clip(str(step["expected_output"]), 200)))
    lines.append(ctx.t("workflows.run_hint", id=workflow.id))
    return "\n".join(lines)


async def workflows_run(ctx: CommandContext) -> Reply:
    """Run a workflow as a task with your input; its steps, verdicts and answer go to the task's thread.

    The input is free text (templates see it as {input}); a JSON object's keys are template variables too.
    """
    components = ctx.services.components
    engine, bus, threads = components.get("engine"), components.get("bus"), components.get("threads")
    if engine is None or bus is None or threads is None:
        raise CommandError("engine.not_running")
    input_text = str(ctx.args["input"] or "").strip()
    async with ctx.services.session_factory() as session:
        workflow = await session.get(AiWorkflow, ctx.args["id"])
        if workflow is None:
            raise NotFoundError("workflows.not_found", id=ctx.args["id"])
        name = workflow.name
    subscription = bus.subscribe(topics={"task"}, maxsize=50_000)
    try:
        try:
            submitted = await engine.submit(
                title=name, description=input_text, user_id=ctx.principal.user_id, workflow_id=ctx.args["id"],
                priority=int(ctx.args["priority"] or 0),
                origin={"platform": ctx.place.platform, "channel_id": ctx.place.channel_id,
                        "thread_id": ctx.place.thread_id},
            )
        except WorkflowError as err:
            raise CommandError("workflows.cannot_run", reason=err.message) from None
    except BaseException:
        subscription.close()
        raise
    await open_task_thread(ctx, threads=threads, subscription=subscription, task_id=submitted.task_id, label=name,
                           request=f"{name}\n\n{input_text}".strip())
    return None  # the reply was posted above, as the thread's anchor


def _steps(workflow: AiWorkflow) -> list[dict[str, Any]]:
    definition = workflow.definition if isinstance(workflow.definition, dict) else {}
    steps = definition.get("steps")
    return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
