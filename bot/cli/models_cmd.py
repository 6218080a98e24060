"""`orchestrator models …`: see, load, unload, download and choose models on the configured servers.

Providers are the rows of `ai_providers` (`orchestrator providers list`). Every command that asks
the servers also brings `ai_models` up to date, so the catalogue the engine selects from is current.
Direct Hugging Face downloads use `HF_ENDPOINT` (default https://huggingface.co) and `HF_TOKEN`,
the variables huggingface_hub itself reads.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from bot.cli import echo_json
from bot.errors import OrchestratorError

T = TypeVar("T")


@dataclass
class CliContext:
    """What every models/providers command works with: settings, sessions, provider clients."""

    settings: Any
    sessions: Any
    providers: dict[str, Any]
    rows: dict[str, Any]


@asynccontextmanager
async def cli_context(*, provider_names: tuple[str, ...] = (), with_clients: bool = True) -> AsyncIterator[CliContext]:
    """Settings, a database session factory and clients for the (named or enabled) providers."""
    from bot.db.engine import create_engine, session_factory
    from bot.engine.providers.configured import load_providers
    from bot.logs import configure_logging
    from bot.settings import load_settings

    settings = load_settings()
    configure_logging(level="ERROR", fmt=settings.log.format)  # commands report problems themselves
    engine = create_engine(settings.effective_database_url, settings=settings.database)
    clients: dict[str, Any] = {}
    try:
        sessions = session_factory(engine)
        rows: dict[str, Any] = {}
        if with_clients:
            async with sessions() as session:
                configured = await load_providers(session, settings=settings, names=list(provider_names) or None)
            for item in configured:
                clients[item.row.name] = item.client
                rows[item.row.name] = item.row
        yield CliContext(settings=settings, sessions=sessions, providers=clients, rows=rows)
    finally:
        for client in clients.values():
            await client.aclose()
        await engine.dispose()


def run(coroutine_factory: Callable[[], Awaitable[T]]) -> T:
    """Run one command's coroutine, turning database problems into a message with a hint."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    async def main() -> T:
        return await coroutine_factory()

    try:
        return asyncio.run(main())
    except (OperationalError, ProgrammingError) as err:
        raise OrchestratorError(
            f"the database is not ready: {str(err.orig).splitlines()[0] if err.orig else err}",
            hint="run `orchestrator migrate` first",
        ) from err


def _require_providers(ctx: CliContext) -> None:
    if not ctx.providers:
        raise OrchestratorError(
            "no LLM server is configured (or all are disabled)",
            hint="add one with `orchestrator providers add NAME --kind lmstudio --base-url http://…`",
        )


def _size(value: int | None) -> str:
    if not value:
        return "-"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


@click.group()
def models() -> None:
    """List, load, unload, download and recommend models."""


@models.command("list")
@click.option("--provider", "provider_names", multiple=True, help="Only this provider (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_models(provider_names: tuple[str, ...], as_json: bool) -> None:
    """Every model each server offers, loaded or not (and update the catalogue)."""

    async def body() -> None:
        from bot.engine.providers.registry import ModelRegistry

        async with cli_context(provider_names=provider_names) as ctx:
            _require_providers(ctx)
            registry = ModelRegistry(sessions=ctx.sessions, providers=ctx.providers)
            reports = await registry.sync()
            listed: list[dict[str, Any]] = []
            for report in reports:
                if report.error:
                    click.echo(f"{report.provider}: unreachable: {report.error}", err=True)
                    continue
                for info in await registry.list_models(report.provider):
                    listed.append(
                        {
                            "provider": report.provider,
                            "model": info.key,
                            "loaded": info.loaded,
                            "type": info.model_type,
                            "size_bytes": info.size_bytes,
                            "quantization": info.quantization,
                            "context_length": info.context_length,
                            "parameters": info.parameters,
                            "capabilities": sorted(info.capabilities),
                        }
                    )
            if all(report.error for report in reports):
                raise OrchestratorError(
                    "no configured server answered", hint="check `orchestrator providers test NAME`"
                )
            if as_json:
                echo_json(listed)
                return
            if not listed:
                click.echo("no models")
                return
            header = ("PROVIDER", "MODEL", "LOADED", "SIZE", "QUANT", "CONTEXT")
            table = [header] + [
                (
                    m["provider"],
                    m["model"],
                    "yes" if m["loaded"] else "no",
                    _size(m["size_bytes"]),
                    m["quantization"] or "-",
                    str(m["context_length"] or "-"),
                )
                for m in listed
            ]
            widths = [max(len(row[i]) for row in table) for i in range(len(header))]
            for row in table:
                click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())

    run(body)


async def _find_provider(ctx: CliContext, model: str, *, want_loaded: bool | None = None) -> str:
    """The first provider (by priority) that offers `model` (loaded, if asked)."""
    _require_providers(ctx)
    from bot.engine.providers.port import ProviderError

    unreachable = []
    for name, client in ctx.providers.items():
        try:
            infos = await client.list_models(refresh=True)
        except ProviderError as err:
            unreachable.append(f"{name} ({err.message})")
            continue
        for info in infos:
            if info.key == model and (want_loaded is None or info.loaded == want_loaded):
                return name
    state = {True: "has loaded", False: "can load", None: "offers"}[want_loaded]
    detail = f"; unreachable: {', '.join(unreachable)}" if unreachable else ""
    raise OrchestratorError(
        f"no configured server {state} {model!r}{detail}",
        hint="see `orchestrator models list`, or name the server with --provider",
    )


@models.command("load")
@click.argument("model")
@click.option("--provider", "provider_name", help="The server to load it on (default: the first that has it).")
@click.option("--context-length", type=click.IntRange(256, 4_194_304), help="Context window in tokens.")
@click.option("--max-memory-gib", type=click.FloatRange(min=0.1), help="Cap on memory for all loaded models.")
def load(model: str, provider_name: str | None, context_length: int | None, max_memory_gib: float | None) -> None:
    """Load MODEL after checking it fits, unloading least-recently-used idle models if needed."""

    async def body() -> None:
        from bot.engine.providers.port import LoadConfig
        from bot.engine.providers.registry import ModelRegistry
        from bot.engine.providers.vram import ModelMemoryManager, gib

        names = (provider_name,) if provider_name else ()
        async with cli_context(provider_names=names) as ctx:
            target = provider_name or await _find_provider(ctx, model)
            budget = int(max_memory_gib * 1024**3) if max_memory_gib else None
            manager = ModelMemoryManager(providers=ctx.providers, budget_bytes=budget)
            config = LoadConfig(context_length=context_length) if context_length else None
            instance, plan = await manager.load(target, model, config=config)
            for victim in plan.unload_first:
                click.echo(f"unloaded idle {victim.model} on {victim.provider} (freed ~{gib(victim.memory_bytes)})")
            if plan.estimate is not None:
                click.echo(f"memory: needs ~{plan.estimate.describe()}")
            if not plan.checked:
                click.echo(f"memory not checked: {plan.note}")
            if instance is None:
                click.echo(f"{model} is already loaded on {target}")
            else:
                took = f" in {instance.load_time_s:.1f} s" if instance.load_time_s is not None else ""
                click.echo(f"loaded {model} on {target} as instance {instance.instance_id}{took}")
            await ModelRegistry(sessions=ctx.sessions, providers=ctx.providers).sync()

    run(body)


@models.command("unload")
@click.argument("model")
@click.option("--provider", "provider_name", help="The server to unload it from (default: where it is loaded).")
def unload(model: str, provider_name: str | None) -> None:
    """Unload MODEL (every instance of it) to free memory."""

    async def body() -> None:
        from bot.engine.providers.registry import ModelRegistry

        names = (provider_name,) if provider_name else ()
        async with cli_context(provider_names=names) as ctx:
            target = provider_name or await _find_provider(ctx, model, want_loaded=True)
            await ctx.providers[target].unload(model)
            click.echo(f"unloaded {model} from {target}")
            await ModelRegistry(sessions=ctx.sessions, providers=ctx.providers).sync()

    run(body)


class ProgressBar:
    """Renders download progress events: one redrawn line on a terminal, a line per 10 % otherwise."""

    def __init__(self, stream: IO[str] | None = None, *, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.is_tty = self.stream.isatty()
        self._last_step = -1
        self._last_status = ""

    def update(self, progress: Any) -> None:
        """Show one DownloadProgress."""
        fraction = progress.fraction
        parts = [progress.status]
        if fraction is not None:
            filled = int(fraction * self.width)
            parts.insert(0, f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction:4.0%}")
            parts.append(f"{_size(progress.downloaded_bytes)}/{_size(progress.total_bytes)}")
        if progress.bytes_per_s:
            parts.append(f"{_size(int(progress.bytes_per_s))}/s")
        line = "  ".join(parts)
        if self.is_tty:
            self.stream.write("\r" + line.ljust(100))
            if progress.done:
                self.stream.write("\n")
            self.stream.flush()
            return
        step = int(fraction * 10) if fraction is not None else -1
        if progress.done or step != self._last_step or progress.status != self._last_status:
            self.stream.write(line + "\n")
            self.stream.flush()
        self._last_step, self._last_status = step, progress.status


@models.command("download")
@click.argument("model", required=False)
@click.option("--provider", "provider_name", help="Download through this server's own API.")
@click.option("--quantization", help="Which quantisation to fetch (e.g. Q4_K_M), where the server asks.")
@click.option("--hub", nargs=2, metavar="REPO FILE", help="Fetch FILE of Hugging Face repository REPO directly.")
@click.option("--revision", default="main", show_default=True, help="Hub revision (with --hub).")
@click.option("--dest", type=click.Path(dir_okay=False, path_type=Path), help="Where to save (with --hub).")
def download(
    model: str | None,
    provider_name: str | None,
    quantization: str | None,
    hub: tuple[str, str] | None,
    revision: str,
    dest: Path | None,
) -> None:
    """Download MODEL through a server (LM Studio, Ollama), or a file straight from the hub with --hub."""
    if hub is None and not model:
        raise click.UsageError("name a MODEL to download through a server, or use --hub REPO FILE")
    if hub is not None and (model or provider_name):
        raise click.UsageError("--hub downloads directly; do not combine it with MODEL or --provider")
    bar = ProgressBar()

    async def through_hub(repo: str, file: str) -> None:
        from bot.engine.providers.hub import DEFAULT_HUB_URL, HubClient, validate_path, validate_repo
        from bot.settings import load_settings

        validate_repo(repo)
        validate_path(file)
        target = dest or load_settings().data_dir / "models" / repo / file
        base_url = os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_URL
        async with HubClient(base_url=base_url, token=os.environ.get("HF_TOKEN") or None) as client:
            async for progress in client.download(repo, file, dest=target, revision=revision):
                bar.update(progress)
        click.echo(f"saved {repo}/{file} to {target} (sha256 verified)")

    async def through_server(name: str) -> None:
        from bot.engine.providers.registry import ModelRegistry

        names = (provider_name,) if provider_name else ()
        async with cli_context(provider_names=names) as ctx:
            _require_providers(ctx)
            target = provider_name or next(
                (n for n, client in ctx.providers.items() if client.kind in ("lmstudio", "ollama")), None
            )
            if target is None:
                raise OrchestratorError(
                    "none of the configured servers has a download API",
                    hint="use --hub REPO FILE to download directly from Hugging Face",
                )
            async for progress in ctx.providers[target].download(name, quantization=quantization):
                bar.update(progress)
            click.echo(f"downloaded {name} on {target}")
            await ModelRegistry(sessions=ctx.sessions, providers=ctx.providers).sync()

    if hub is not None:
        run(lambda: through_hub(*hub))
    else:
        assert model is not None
        run(lambda: through_server(model))


@models.command("recommend")
@click.argument("task_type")
@click.option("--provider", "provider_names", multiple=True, help="Only models of this provider (repeatable).")
@click.option("--limit", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--no-sync", is_flag=True, help="Rank the stored catalogue without asking the servers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recommend(task_type: str, provider_names: tuple[str, ...], limit: int, no_sync: bool, as_json: bool) -> None:
    """The best models for TASK_TYPE (code, reasoning, summarise, translate, extract, chat, vision, …)."""
    from bot.engine.providers.recommend import normalise_task

    task = normalise_task(task_type)

    async def body() -> None:
        from bot.engine.providers.recommend import recommend as rank_models
        from bot.engine.providers.registry import ModelRegistry
        from bot.engine.providers.vram import read_free_memory

        async with cli_context(provider_names=provider_names, with_clients=not no_sync) as ctx:
            if not no_sync:
                for report in await ModelRegistry(sessions=ctx.sessions, providers=ctx.providers).sync():
                    if report.error:
                        click.echo(f"{report.provider}: unreachable, using the stored catalogue", err=True)
            async with ctx.sessions() as session:
                ranked = await rank_models(
                    session,
                    task,
                    providers=provider_names or None,
                    limit=limit,
                    memory_total_bytes=read_free_memory().total_bytes,
                )
        if as_json:
            echo_json([{"provider": r.provider, "model": r.model, "score": r.score, "reason": r.reason}
                       for r in ranked])  # fmt: skip
            return
        if not ranked:
            raise OrchestratorError(
                f"no known model can do {task}",
                hint="download one (`orchestrator models download`) or check `orchestrator models list`",
            )
        for position, item in enumerate(ranked, start=1):
            click.echo(f"{position}. {item.reason} (score {item.score:g})")

    run(body)
