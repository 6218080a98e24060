"""/logs, /ranking, /alerts, /accounts: what happened, who does best, what needs attention, what it costs."""

from __future__ import annotations

from sqlalchemy import select

from bot.commands._format import clip, lines_table, short_time
from bot.commands.errors import NotFoundError
from bot.commands.registry import CommandContext, CommandRegistry, Param
from bot.db.base import utcnow
from bot.db.models import (
    AiModel,
    AiQualityMetric,
    Alert,
    AlertStatus,
    ExecutionLog,
    ExternalApiAccount,
    LogLevel,
    User,
    UserRole,
)

LEVELS = tuple(level.value for level in LogLevel)


def register(registry: CommandRegistry) -> None:
    """Add the operations commands."""
    registry.add(
        "logs",
        logs_command,
        role=UserRole.OPERATOR,
        params=[
            Param("task", kind="int", option=True, required=False, minimum=1),
            Param("level", kind="choice", option=True, required=False, choices=LEVELS),
            Param("limit", kind="int", option=True, required=False, default=10, minimum=1, maximum=50),
        ],
    )
    registry.add(
        "ranking",
        ranking_command,
        role=UserRole.VIEWER,
        params=[
            Param("category", required=False, max_length=64),
            Param("limit", kind="int", option=True, required=False, default=10, minimum=1, maximum=50),
        ],
    )
    registry.add(
        "alerts list",
        alerts_list,
        role=UserRole.VIEWER,
        params=[Param("limit", kind="int", option=True, required=False, default=10, minimum=1, maximum=50)],
    )
    registry.add("alerts ack", alerts_ack, role=UserRole.OPERATOR, params=[Param("id", kind="int", minimum=1)])
    registry.set_default("alerts", "list")
    registry.add("accounts", accounts_command, role=UserRole.VIEWER)


async def logs_command(ctx: CommandContext) -> str:
    """Show the newest execution log entries: /logs [--task N] [--level error] [--limit 10]."""
    statement = select(ExecutionLog, AiModel.model_key).outerjoin(AiModel, AiModel.id == ExecutionLog.model_id)
    if ctx.args["task"] is not None:
        statement = statement.where(ExecutionLog.task_id == ctx.args["task"])
    if ctx.args["level"] is not None:
        statement = statement.where(ExecutionLog.level == LogLevel(ctx.args["level"]))
    statement = statement.order_by(ExecutionLog.created_at.desc(), ExecutionLog.id.desc()).limit(ctx.args["limit"])
    async with ctx.services.session_factory() as session:
        rows = (await session.execute(statement)).all()
    if not rows:
        return ctx.t("logs.none")
    table = [
        [
            short_time(entry.created_at),
            str(entry.level),
            entry.event,
            f"{entry.task_id or '-'}/{entry.subtask_id or '-'}",
            model_key or "-",
            f"{entry.latency_ms} ms" if entry.latency_ms is not None else "-",
        ]
        for entry, model_key in rows
    ]
    header = [ctx.t(f"logs.col.{c}") for c in ("at", "level", "event", "task", "model", "latency")]
    return ctx.t("logs.title", count=len(rows)) + "\n" + lines_table(table, header=header)


async def ranking_command(ctx: CommandContext) -> str:
    """Rank models by their track record, overall or in one category: /ranking [category]."""
    statement = select(AiQualityMetric, AiModel.model_key).join(AiModel, AiModel.id == AiQualityMetric.model_id)
    category = ctx.args["category"]
    if category:
        statement = statement.where(AiQualityMetric.category == category)
    statement = statement.order_by(
        AiQualityMetric.category,
        AiQualityMetric.rank.is_(None),
        AiQualityMetric.rank,
        AiQualityMetric.success_rate.desc(),
    ).limit(ctx.args["limit"] * (1 if category else 5))
    async with ctx.services.session_factory() as session:
        rows = (await session.execute(statement)).all()
    if not rows:
        return ctx.t("ranking.none")
    table = [
        [
            metric.category,
            str(metric.rank) if metric.rank is not None else "-",
            model_key,
            str(metric.runs),
            f"{metric.success_rate * 100:.0f}%",
            f"{metric.mean_validation_score:.0f}" if metric.mean_validation_score is not None else "-",
            f"{metric.mean_time_ms / 1000:.1f}s",
        ]
        for metric, model_key in rows
    ]
    header = [ctx.t(f"ranking.col.{c}") for c in ("category", "rank", "model", "runs", "success", "score", "time")]
    return ctx.t("ranking.title") + "\n" + lines_table(table, header=header)


async def alerts_list(ctx: CommandContext) -> str:
    """List open and acknowledged alerts, most severe first."""
    severity_order = {"critical": 0, "warning": 1, "info": 2}
    async with ctx.services.session_factory() as session:
        alerts = (
            (
                await session.execute(
                    select(Alert)
                    .where(Alert.status != AlertStatus.RESOLVED)
                    .order_by(Alert.opened_at.desc())
                    .limit(ctx.args["limit"])
                )
            )
            .scalars()
            .all()
        )
    if not alerts:
        return ctx.t("alerts.none")
    ordered = sorted(alerts, key=lambda a: (severity_order.get(str(a.severity), 3), -a.opened_at.timestamp()))
    lines = [ctx.t("alerts.title", count=len(ordered))]
    for alert in ordered:
        state = ctx.t("alerts.acknowledged") if alert.status == AlertStatus.ACKNOWLEDGED else ""
        lines.append(
            f"#{alert.id} [{str(alert.severity).upper()}] {clip(alert.message, 200)} "
            f"(×{alert.occurrences}, {short_time(alert.opened_at)}) {state}".rstrip()
        )
    return "\n".join(lines)


async def alerts_ack(ctx: CommandContext) -> str:
    """Acknowledge an alert so it stops re-notifying (it resolves when the condition clears)."""
    async with ctx.services.session_factory() as session:
        alert = await session.get(Alert, ctx.args["id"])
        if alert is None or alert.status == AlertStatus.RESOLVED:
            raise NotFoundError("alerts.not_found", id=ctx.args["id"])
        alert.status = AlertStatus.ACKNOWLEDGED
        alert.acknowledged_at = utcnow()
        alert.acknowledged_by_user_id = ctx.principal.user_id
        await session.commit()
    return ctx.t("alerts.acked", id=ctx.args["id"])


async def accounts_command(ctx: CommandContext) -> str:
    """List paid API accounts and their remaining credits (admins see everyone's)."""
    statement = select(ExternalApiAccount, User.username).join(User, User.id == ExternalApiAccount.user_id)
    if ctx.principal.role != UserRole.ADMIN:
        statement = statement.where(ExternalApiAccount.user_id == ctx.principal.user_id)
    async with ctx.services.session_factory() as session:
        rows = (
            await session.execute(statement.order_by(ExternalApiAccount.service, ExternalApiAccount.account_name))
        ).all()
    if not rows:
        return ctx.t("accounts.none")
    table = [
        [
            account.service,
            account.account_name,
            owner,
            (
                f"{account.credits_remaining.normalize():f} {account.credits_unit or ''}".strip()
                if account.credits_remaining is not None
                else "-"
            ),
            short_time(account.last_synced_at),
            ctx.t("accounts.sync_failed") if account.sync_error else "",
        ]
        for account, owner in rows
    ]
    header = [ctx.t(f"accounts.col.{c}") for c in ("service", "account", "owner", "credits", "synced", "state")]
    return ctx.t("accounts.title", count=len(rows)) + "\n" + lines_table(table, header=header)
