"""/help and /status: what the bot can do for this person, and how the system is doing."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import func, select

from bot.commands._format import human_bytes
from bot.commands.errors import NotFoundError
from bot.commands.registry import CommandContext, CommandRegistry, CommandSpec, Param, role_allows
from bot.db.models import AiModel, AiProvider, Subtask, SubtaskStatus, Task, TaskStatus, UserRole
from bot.platforms.events import Card
from bot.platforms.i18n import help_text

ACTIVE_TASK_STATES = (TaskStatus.PENDING, TaskStatus.PLANNING, TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.PAUSED)
ACTIVE_SUBTASK_STATES = (
    SubtaskStatus.PENDING,
    SubtaskStatus.QUEUED,
    SubtaskStatus.RUNNING,
    SubtaskStatus.VALIDATING,
    SubtaskStatus.TIEBREAKING,
)


def register(registry: CommandRegistry) -> None:
    """Add /help and /status."""

    async def help_command(ctx: CommandContext) -> str:
        """List the commands you may use, or explain one: /help [command]."""
        wanted = ctx.args["command"]
        if wanted:
            name = " ".join(wanted.lower().lstrip("/").split())
            specs = [registry.get(name)] if registry.get(name) else registry.subcommands(name)
            visible = [s for s in specs if s is not None]
            if not visible:
                raise NotFoundError("help.no_such_command", name=name)
            return "\n".join(_describe(spec, ctx.language) for spec in visible)
        allowed = [spec for spec in registry.specs() if role_allows(ctx.principal.role, spec.role)]
        lines = [ctx.t("help.header", role=str(ctx.principal.role))]
        lines.extend(f"`/{spec.name}` — {help_text(spec, ctx.language)}" for spec in allowed)
        lines.append(ctx.t("help.footer"))
        return "\n".join(lines)

    registry.add(
        "help",
        help_command,
        role=UserRole.VIEWER,
        params=[Param("command", kind="text", required=False, max_length=60)],
    )

    async def status_command(ctx: CommandContext) -> Card:
        """Show the work queue, loaded models and the machine's CPU, memory and disk."""
        factory = ctx.services.session_factory
        async with factory() as session:
            task_rows = (
                await session.execute(
                    select(Task.status, func.count()).where(Task.status.in_(ACTIVE_TASK_STATES)).group_by(Task.status)
                )
            ).all()
            subtask_rows = (
                await session.execute(
                    select(Subtask.status, func.count())
                    .where(Subtask.status.in_(ACTIVE_SUBTASK_STATES))
                    .group_by(Subtask.status)
                )
            ).all()
            loaded = (
                await session.execute(
                    select(AiModel.model_key, AiProvider.name)
                    .join(AiProvider, AiProvider.id == AiModel.provider_id)
                    .where(AiModel.is_loaded.is_(True), AiModel.vanished_at.is_(None))
                    .order_by(AiProvider.name, AiModel.model_key)
                )
            ).all()
        tasks = {str(status): count for status, count in task_rows}
        subtasks = {str(status): count for status, count in subtask_rows}
        machine = await asyncio.to_thread(_machine_summary)
        fields = [
            (ctx.t("status.tasks"), _counts(tasks, ctx)),
            (ctx.t("status.subtasks"), _counts(subtasks, ctx)),
            (
                ctx.t("status.models_loaded", count=len(loaded)),
                ", ".join(f"{key} ({provider})" for key, provider in loaded[:10]) or ctx.t("status.none"),
            ),
            (ctx.t("status.machine"), ctx.t("status.machine_line", **machine)),
            (ctx.t("status.uptime"), _duration(time.monotonic() - ctx.services.started_at)),
        ]
        return Card(title=ctx.t("status.title"), fields=tuple(fields))

    registry.add("status", status_command, role=UserRole.VIEWER)


def _describe(spec: CommandSpec, language: str) -> str:
    from bot.platforms.i18n import translate

    return f"`{spec.usage()}`\n{help_text(spec, language)}\n" + translate(
        "help.required_role", language, role=str(spec.role)
    )


def _counts(counts: dict[str, int], ctx: CommandContext) -> str:
    if not counts:
        return ctx.t("status.none")
    return ", ".join(f"{status}: {count}" for status, count in sorted(counts.items()))


def _machine_summary() -> dict[str, str]:
    import psutil

    cpu = psutil.cpu_percent(interval=0.1)
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage("/")
    return {
        "cpu": f"{cpu:.0f}",
        "ram": f"{memory.percent:.0f}",
        "ram_total": human_bytes(memory.total),
        "disk": f"{disk.percent:.0f}",
        "disk_free": human_bytes(disk.free),
    }


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"
