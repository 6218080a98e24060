"""`orchestrator providers …`: the LLM servers the engine may call (rows of `ai_providers`).

An API token is never taken as a command-line argument (it would stay in the shell history and
show in `ps`): it comes from a hidden prompt or an environment variable, and is stored sealed by
the vault in a credential the provider row points at.
"""

from __future__ import annotations

import os
import time

import click

from bot.cli import echo_json
from bot.cli.models_cmd import cli_context, run
from bot.errors import OrchestratorError

KIND_CHOICES = ("lmstudio", "ollama", "openai_compatible", "embedded")


@click.group()
def providers() -> None:
    """Add, list and test LLM servers."""


@providers.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(KIND_CHOICES), required=True, help="The protocol the server speaks.")
@click.option("--base-url", help="e.g. http://127.0.0.1:1234 (not needed for the embedded kind).")
@click.option("--api-token-env", metavar="VAR", help="Read the server's API token from this environment variable.")
@click.option("--ask-token", is_flag=True, help="Prompt for the server's API token (input hidden).")
@click.option("--local/--remote", "is_local", default=None, help="Default: decided from the URL's address.")
@click.option("--priority", type=click.IntRange(-1000, 1000), default=0, show_default=True,
              help="Higher is preferred when several servers offer a model.")  # fmt: skip
@click.option("--disabled", is_flag=True, help="Add it switched off.")
def add(
    name: str,
    kind: str,
    base_url: str | None,
    api_token_env: str | None,
    ask_token: bool,
    is_local: bool | None,
    priority: int,
    disabled: bool,
) -> None:
    """Add the server NAME; its API token (if any) is stored encrypted."""
    from pydantic import SecretStr

    name = name.strip()
    if not name or len(name) > 100 or any(ord(ch) < 32 for ch in name):
        raise click.BadParameter("must be 1-100 printable characters", param_hint="NAME")
    if kind != "embedded":
        if not base_url or not base_url.startswith(("http://", "https://")) or len(base_url) > 500:
            raise click.BadParameter("must be an http:// or https:// URL of at most 500 characters",
                                     param_hint="--base-url")  # fmt: skip
        base_url = base_url.rstrip("/")
    if api_token_env and ask_token:
        raise click.UsageError("use either --api-token-env or --ask-token, not both")
    token: SecretStr | None = None
    if api_token_env:
        value = os.environ.get(api_token_env)
        if not value:
            raise OrchestratorError(
                f"the environment variable {api_token_env} is not set or empty",
                hint=f"export {api_token_env}=… first (the token is not echoed)",
            )
        token = SecretStr(value.strip())
    elif ask_token:
        token = SecretStr(click.prompt("API token", hide_input=True).strip())
    if is_local is None:
        from bot.engine.providers._http import is_local_url

        is_local = True if kind == "embedded" else is_local_url(base_url or "")

    async def body() -> None:
        from sqlalchemy import select

        from bot.db.models import AiProvider, HealthStatus, ProviderKind
        from bot.engine.providers.configured import store_provider_token

        async with cli_context(with_clients=False) as ctx, ctx.sessions() as session, session.begin():
            if await session.scalar(select(AiProvider.id).where(AiProvider.name == name)) is not None:
                raise OrchestratorError(
                    f"a provider named {name!r} exists already", hint="choose another name"
                )
            row = AiProvider(
                name=name,
                kind=ProviderKind(kind),
                base_url=base_url or "",
                is_enabled=not disabled,
                is_local=is_local,
                priority=priority,
                settings={},
                health_status=HealthStatus.UNKNOWN,
            )
            session.add(row)
            await session.flush()
            if token is not None:
                await store_provider_token(session, row, token, settings=ctx.settings)
        where = f" at {base_url}" if base_url else ""
        sealed = ", token stored encrypted" if token is not None else ""
        click.echo(f"added provider {name} ({kind}{where}, {'local' if is_local else 'remote'}{sealed})")
        click.echo(f"check it with: orchestrator providers test {name!r}")

    run(body)


@providers.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_providers(as_json: bool) -> None:
    """Every configured server with its state (tokens are never shown)."""

    async def body() -> None:
        from sqlalchemy import func, select

        from bot.db.models import AiModel, AiProvider

        async with cli_context(with_clients=False) as ctx, ctx.sessions() as session:
            counts = dict(
                (
                    await session.execute(
                        select(AiModel.provider_id, func.count())
                        .where(AiModel.vanished_at.is_(None))
                        .group_by(AiModel.provider_id)
                    )
                ).all()
            )
            rows = (
                await session.scalars(select(AiProvider).order_by(AiProvider.priority.desc(), AiProvider.name))
            ).all()
        listed = [
            {
                "name": row.name,
                "kind": str(row.kind),
                "base_url": row.base_url,
                "enabled": row.is_enabled,
                "local": row.is_local,
                "priority": row.priority,
                "health": str(row.health_status),
                "health_detail": row.health_detail,
                "has_token": row.credential_id is not None,
                "models": counts.get(row.id, 0),
                "last_checked_at": row.last_checked_at.isoformat() if row.last_checked_at else None,
            }
            for row in rows
        ]
        if as_json:
            echo_json(listed)
            return
        if not listed:
            click.echo("no providers; add one with `orchestrator providers add`")
            return
        for item in listed:
            flags = ["enabled" if item["enabled"] else "disabled", "local" if item["local"] else "remote"]
            if item["has_token"]:
                flags.append("token")
            click.echo(
                f"{item['name']}  {item['kind']}  {item['base_url'] or '-'}  {', '.join(flags)}  "
                f"priority {item['priority']}  health {item['health']}  {item['models']} models"
            )

    run(body)


@providers.command("test")
@click.argument("name")
def test(name: str) -> None:
    """Check that server NAME answers and list what it serves; records its health."""

    async def body() -> None:
        from sqlalchemy import select

        from bot.db.base import utcnow
        from bot.db.models import AiProvider, HealthStatus
        from bot.engine.providers.port import ProviderError, ProviderUnavailableError

        async with cli_context(provider_names=(name,)) as ctx:
            client = ctx.providers[name]
            started = time.monotonic()
            status = await client.health()
            detail = status.detail
            models: list[object] = []
            if status.ok:
                try:
                    models = list(await client.list_models(refresh=True))
                except ProviderError as err:
                    detail = f"answers, but listing models failed: {err.message}"
            elapsed_ms = (time.monotonic() - started) * 1000
            healthy = status.ok and not detail.startswith("answers, but")
            async with ctx.sessions() as session, session.begin():
                row = await session.scalar(select(AiProvider).where(AiProvider.name == name))
                if row is not None:
                    row.health_status = HealthStatus.HEALTHY if healthy else HealthStatus.DOWN
                    row.health_detail = (detail or None) and detail[:500]
                    row.last_checked_at = utcnow()
        if not status.ok:
            raise ProviderUnavailableError(
                f"{name} does not answer: {detail or 'no detail'}",
                hint=f"check that the server runs at {client.base_url} and the token is right",
            )
        loaded = sum(1 for info in models if getattr(info, "loaded", False))
        version = f", version {status.version}" if status.version else ""
        latency = status.latency_ms if status.latency_ms is not None else elapsed_ms
        click.echo(f"{name}: ok in {latency:.0f} ms{version}; {len(models)} models, {loaded} loaded")
        if not healthy:
            click.echo(f"warning: {detail}", err=True)

    run(body)
