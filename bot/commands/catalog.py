"""/providers, /ais, /templates, /instructions: what the orchestrator is configured with."""

from __future__ import annotations

from sqlalchemy import func, select

from bot.commands._format import clip, lines_table, short_time
from bot.commands.errors import NotFoundError
from bot.commands.registry import CommandContext, CommandRegistry, Param
from bot.db.models import (
    AiModel,
    AiProvider,
    AiTemplate,
    Instruction,
    InstructionScope,
    SpecializedAi,
    UserRole,
)

MAX_INSTRUCTION_CHARS = 2000


def register(registry: CommandRegistry) -> None:
    """Add the catalogue commands."""
    registry.add("providers list", providers_list, role=UserRole.VIEWER)
    registry.set_default("providers", "list")
    registry.add("ais", ais_command, role=UserRole.VIEWER)
    registry.add(
        "templates",
        templates_command,
        role=UserRole.VIEWER,
        params=[Param("name", required=False, max_length=100)],
    )
    registry.add(
        "instructions list",
        instructions_list,
        role=UserRole.VIEWER,
        params=[Param("category", option=True, required=False, max_length=64)],
    )
    registry.add(
        "instructions add",
        instructions_add,
        role=UserRole.OPERATOR,
        params=[
            Param("text", kind="text", max_length=MAX_INSTRUCTION_CHARS),
            Param("category", option=True, required=False, max_length=64),
            Param("priority", kind="int", option=True, required=False, default=0, minimum=-100, maximum=100),
        ],
    )
    registry.add(
        "instructions remove",
        instructions_remove,
        role=UserRole.OPERATOR,
        params=[Param("id", kind="int", minimum=1)],
    )
    registry.set_default("instructions", "list")


async def providers_list(ctx: CommandContext) -> str:
    """List the LLM servers: kind, address, health and how many models each offers."""
    async with ctx.services.session_factory() as session:
        model_counts = (
            select(AiModel.provider_id, func.count().label("models"))
            .where(AiModel.vanished_at.is_(None))
            .group_by(AiModel.provider_id)
            .subquery()
        )
        rows = (
            await session.execute(
                select(AiProvider, func.coalesce(model_counts.c.models, 0))
                .outerjoin(model_counts, model_counts.c.provider_id == AiProvider.id)
                .order_by(AiProvider.priority.desc(), AiProvider.name)
            )
        ).all()
    if not rows:
        return ctx.t("providers.none")
    table = [
        [
            provider.name,
            str(provider.kind),
            provider.base_url,
            ctx.t("common.on") if provider.is_enabled else ctx.t("common.off"),
            str(provider.health_status),
            str(count),
            short_time(provider.last_checked_at),
        ]
        for provider, count in rows
    ]
    header = [ctx.t(f"providers.col.{c}") for c in ("name", "kind", "url", "enabled", "health", "models", "checked")]
    return ctx.t("providers.title", count=len(rows)) + "\n" + lines_table(table, header=header)


async def ais_command(ctx: CommandContext) -> str:
    """List the specialised AIs (planner, coder, reviewer…) and the model each prefers."""
    async with ctx.services.session_factory() as session:
        rows = (
            await session.execute(
                select(SpecializedAi, AiModel.model_key)
                .outerjoin(AiModel, AiModel.id == SpecializedAi.preferred_model_id)
                .order_by(SpecializedAi.role, SpecializedAi.name)
            )
        ).all()
    if not rows:
        return ctx.t("ais.none")
    table = [
        [
            ai.name,
            str(ai.role),
            ai.category or "-",
            model_key or ctx.t("ais.auto"),
            ctx.t("common.on") if ai.is_active else ctx.t("common.off"),
        ]
        for ai, model_key in rows
    ]
    header = [ctx.t(f"ais.col.{c}") for c in ("name", "role", "category", "model", "active")]
    return ctx.t("ais.title", count=len(rows)) + "\n" + lines_table(table, header=header)


async def templates_command(ctx: CommandContext) -> str:
    """List prompt templates, or show one with its variables: /templates [name]."""
    name = ctx.args["name"]
    async with ctx.services.session_factory() as session:
        if name:
            template = (await session.execute(select(AiTemplate).where(AiTemplate.name == name))).scalars().first()
            if template is None:
                raise NotFoundError("templates.not_found", name=name)
            variables = ", ".join(sorted((template.variables.get("properties") or {}).keys())) or "-"
            return ctx.t(
                "templates.show",
                name=template.name,
                category=template.category or "-",
                description=template.description or "-",
                variables=variables,
                body=clip(template.body, 1500),
            )
        templates = (
            (await session.execute(select(AiTemplate).where(AiTemplate.is_active.is_(True)).order_by(AiTemplate.name)))
            .scalars()
            .all()
        )
    if not templates:
        return ctx.t("templates.none")
    lines = [ctx.t("templates.title", count=len(templates))]
    lines.extend(f"• `{t.name}` ({t.category or '-'}) — {clip(t.description, 100) or '-'}" for t in templates)
    return "\n".join(lines)


async def instructions_list(ctx: CommandContext) -> str:
    """List the standing instructions added to prompts, highest priority first."""
    category = ctx.args["category"]
    statement = select(Instruction).where(Instruction.is_active.is_(True))
    if category:
        statement = statement.where(Instruction.category == category)
    async with ctx.services.session_factory() as session:
        rows = (await session.execute(statement.order_by(Instruction.priority.desc(), Instruction.id))).scalars().all()
    if not rows:
        return ctx.t("instructions.none")
    lines = [ctx.t("instructions.title", count=len(rows))]
    for row in rows:
        where = str(row.scope) if row.scope != InstructionScope.CATEGORY else f"category:{row.category}"
        if row.scope == InstructionScope.TASK:
            where = f"task:{row.task_id}"
        lines.append(f"#{row.id} [{where}, p={row.priority}] {clip(row.text, 300)}")
    return "\n".join(lines)


async def instructions_add(ctx: CommandContext) -> str:
    """Add a standing instruction for every prompt, or for one category with --category."""
    category = ctx.args["category"]
    instruction = Instruction(
        scope=InstructionScope.CATEGORY if category else InstructionScope.GLOBAL,
        category=category,
        text=ctx.args["text"],
        priority=ctx.args["priority"] or 0,
    )
    async with ctx.services.session_factory() as session:
        session.add(instruction)
        await session.commit()
    return ctx.t("instructions.added", id=instruction.id)


async def instructions_remove(ctx: CommandContext) -> str:
    """Switch off a standing instruction by its number (it stays in history)."""
    async with ctx.services.session_factory() as session:
        instruction = await session.get(Instruction, ctx.args["id"])
        if instruction is None or not instruction.is_active:
            raise NotFoundError("instructions.not_found", id=ctx.args["id"])
        instruction.is_active = False
        await session.commit()
    return ctx.t("instructions.removed", id=ctx.args["id"])
