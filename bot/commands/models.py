"""/models and /providers test: the provider layer from chat (list, load, unload, recommend, download).

Provider clients are built from the `ai_providers` rows (tokens opened from the vault) for each
command and closed after it; the catalogue in `ai_models` is refreshed through `ModelRegistry`
after anything that changes what a server holds, so /status and /ranking see the same truth.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import select

from bot.commands._format import human_bytes, lines_table
from bot.commands.errors import CommandError, NotFoundError
from bot.commands.registry import CommandContext, CommandRegistry, Param
from bot.db.models import AiModel, AiProvider, UserRole
from bot.engine.providers.configured import ConfiguredProvider
from bot.engine.providers.port import DownloadProgress
from bot.platforms.events import MessageHandle
from bot.settings import Settings

BAR_WIDTH = 20


def register(registry: CommandRegistry) -> None:
    """Add /models … and /providers test."""
    provider = Param("provider", option=True, required=False, max_length=100)
    registry.add("providers test", providers_test, role=UserRole.OPERATOR, params=[Param("name", max_length=100)])
    registry.add("models list", models_list, role=UserRole.VIEWER, params=[provider])
    registry.add("models load", models_load, role=UserRole.OPERATOR, params=[Param("model", max_length=255), provider])
    registry.add(
        "models unload", models_unload, role=UserRole.OPERATOR, params=[Param("model", max_length=255), provider]
    )
    registry.add(
        "models recommend",
        models_recommend,
        role=UserRole.VIEWER,
        params=[
            Param("task", max_length=40),
            Param("limit", kind="int", option=True, required=False, default=5, minimum=1, maximum=20),
        ],
    )
    registry.add(
        "models download",
        models_download,
        role=UserRole.ADMIN,
        params=[
            Param("model", max_length=500),
            provider,
            Param("quantization", option=True, required=False, max_length=32),
        ],
    )
    registry.set_default("models", "list")


def _settings(ctx: CommandContext) -> Settings:
    settings = ctx.services.settings
    if isinstance(settings, Settings):
        return settings
    from bot.settings import load_settings

    return load_settings()


@asynccontextmanager
async def _clients(ctx: CommandContext, names: list[str] | None = None) -> AsyncIterator[list[ConfiguredProvider]]:
    from bot.engine.providers.configured import load_providers

    async with ctx.services.session_factory() as session:
        configured = await load_providers(session, settings=_settings(ctx), names=names)
    try:
        yield configured
    finally:
        for item in configured:
            await item.client.aclose()


async def _sync(ctx: CommandContext, configured: list[ConfiguredProvider]) -> None:
    from bot.engine.providers.registry import ModelRegistry

    registry = ModelRegistry(
        sessions=ctx.services.session_factory, providers={item.row.name: item.client for item in configured}
    )
    await registry.sync()


async def _provider_for(ctx: CommandContext, model: str, provider: str | None) -> str:
    """The provider that offers `model` (named, or the only one that has it in the catalogue)."""
    if provider:
        return provider
    async with ctx.services.session_factory() as session:
        names = (
            (
                await session.execute(
                    select(AiProvider.name)
                    .join(AiModel, AiModel.provider_id == AiProvider.id)
                    .where(AiModel.model_key == model, AiModel.vanished_at.is_(None), AiProvider.is_enabled.is_(True))
                    .order_by(AiProvider.priority.desc())
                )
            )
            .scalars()
            .all()
        )
    if not names:
        raise NotFoundError("models.not_found", model=model)
    if len(names) > 1:
        raise CommandError("models.ambiguous", model=model, providers=", ".join(names))
    return str(names[0])


async def providers_test(ctx: CommandContext) -> str:
    """Check that an LLM server answers, how fast, and how many models it offers."""
    async with _clients(ctx, [ctx.args["name"]]) as configured:
        item = configured[0]
        health = await item.client.health()
        if not health.ok:
            return ctx.t("providers.test_down", name=item.row.name, detail=health.detail or "-")
        models = await item.client.list_models(refresh=True)
        await _sync(ctx, configured)
    latency = f"{health.latency_ms:.0f}" if health.latency_ms is not None else "?"
    return ctx.t(
        "providers.test_ok",
        name=item.row.name,
        latency=latency,
        models=len(models),
        loaded=sum(1 for model in models if model.loaded),
    )


async def models_list(ctx: CommandContext) -> str:
    """List each server's models, loaded ones first: /models list [--provider name]."""
    names = [ctx.args["provider"]] if ctx.args["provider"] else None
    async with _clients(ctx, names) as configured:
        await _sync(ctx, configured)  # unreachable servers keep their last known catalogue
    statement = (
        select(AiModel, AiProvider.name)
        .join(AiProvider, AiProvider.id == AiModel.provider_id)
        .where(AiModel.vanished_at.is_(None))
        .order_by(AiModel.is_loaded.desc(), AiProvider.name, AiModel.model_key)
    )
    if names:
        statement = statement.where(AiProvider.name.in_(names))
    async with ctx.services.session_factory() as session:
        rows = (await session.execute(statement)).all()
    if not rows:
        return ctx.t("models.none")
    table = [
        [
            model.model_key,
            provider,
            ctx.t("models.loaded") if model.is_loaded else "",
            human_bytes(model.size_bytes),
            model.quantization or "-",
            str(model.context_length or "-"),
        ]
        for model, provider in rows[:40]
    ]
    header = [ctx.t(f"models.col.{c}") for c in ("model", "provider", "state", "size", "quant", "context")]
    return ctx.t("models.title", count=len(rows)) + "\n" + lines_table(table, header=header)


async def models_load(ctx: CommandContext) -> str:
    """Load a model into memory: /models load <model> [--provider name]."""
    model = ctx.args["model"]
    provider = await _provider_for(ctx, model, ctx.args["provider"])
    async with _clients(ctx, [provider]) as configured:
        started = time.monotonic()
        instance = await configured[0].client.load(model)
        await _sync(ctx, configured)
    seconds = instance.load_time_s if instance.load_time_s is not None else time.monotonic() - started
    return ctx.t(
        "models.loaded_ok", model=model, provider=provider, instance=instance.instance_id, seconds=f"{seconds:.1f}"
    )


async def models_unload(ctx: CommandContext) -> str:
    """Free a loaded model's memory: /models unload <model> [--provider name]."""
    model = ctx.args["model"]
    provider = await _provider_for(ctx, model, ctx.args["provider"])
    async with _clients(ctx, [provider]) as configured:
        await configured[0].client.unload(model)
        await _sync(ctx, configured)
    return ctx.t("models.unloaded_ok", model=model, provider=provider)


async def models_recommend(ctx: CommandContext) -> str:
    """Recommend models for a kind of task (code, chat, reasoning…): /models recommend <task>."""
    import psutil

    from bot.engine.providers.recommend import recommend

    async with ctx.services.session_factory() as session:
        picks = await recommend(
            session, ctx.args["task"], limit=ctx.args["limit"], memory_total_bytes=psutil.virtual_memory().total
        )
    if not picks:
        return ctx.t("models.no_recommendation", task=ctx.args["task"])
    lines = [ctx.t("models.recommend_title", task=ctx.args["task"])]
    lines.extend(f"{index}. {pick.reason} ({pick.score:g})" for index, pick in enumerate(picks, start=1))
    return "\n".join(lines)


def progress_bar(progress: DownloadProgress) -> str:
    """`[██████░░░░] 60% · 1.2 GiB / 2.0 GiB · 30.0 MiB/s`, or the status when the size is unknown."""
    fraction = progress.fraction
    parts = []
    if fraction is not None:
        filled = round(fraction * BAR_WIDTH)
        parts.append(f"[{'█' * filled}{'░' * (BAR_WIDTH - filled)}] {fraction * 100:.0f}%")
    else:
        parts.append(progress.status)
    if progress.downloaded_bytes is not None:
        total = f" / {human_bytes(progress.total_bytes)}" if progress.total_bytes else ""
        parts.append(f"{human_bytes(progress.downloaded_bytes)}{total}")
    if progress.bytes_per_s:
        parts.append(f"{human_bytes(progress.bytes_per_s)}/s")
    return " · ".join(parts)


async def models_download(ctx: CommandContext) -> str:
    """Download a model through its server, with a progress bar: /models download <model> [--provider name]."""
    model = ctx.args["model"]
    provider = ctx.args["provider"]
    if not provider:
        async with ctx.services.session_factory() as session:
            provider = (
                await session.execute(
                    select(AiProvider.name)
                    .where(AiProvider.is_enabled.is_(True))
                    .order_by(AiProvider.priority.desc(), AiProvider.id)
                    .limit(1)
                )
            ).scalar()
        if provider is None:
            raise CommandError("providers.none")
    conversation = ctx.conversation
    handle: MessageHandle = await conversation.say(ctx.t("models.download_started", model=model, provider=provider))
    shown_at = time.monotonic()
    last: DownloadProgress | None = None
    async with _clients(ctx, [provider]) as configured:
        async for progress in configured[0].client.download(model, quantization=ctx.args["quantization"]):
            last = progress
            if time.monotonic() - shown_at >= conversation.limits.min_edit_interval_s:
                await handle.edit(f"{model}: {progress_bar(progress)}")
                shown_at = time.monotonic()
        await _sync(ctx, configured)
    final = progress_bar(last) if last is not None else ""
    await handle.edit(f"{model}: {final}".rstrip(": "))
    return ctx.t("models.download_done", model=model, provider=provider)
