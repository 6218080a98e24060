"""`orchestrator discord sync [--guild ID]`: register the slash commands with Discord.

Guild commands appear at once (use them while trying things out); global commands reach every
server the bot is in, and Discord may take up to an hour to show changes.
"""

from __future__ import annotations

import asyncio

import click


@click.group()
def discord() -> None:
    """Discord set-up."""


@discord.command()
@click.option(
    "--guild",
    "guild_id",
    default=None,
    help="Register in this server only (instant). Default: settings' guild_id, else global.",
)
@click.option("--global", "global_", is_flag=True, help="Register globally even when a guild_id is configured.")
@click.option("--json", "as_json", is_flag=True, help="Print what Discord stored as JSON.")
def sync(guild_id: str | None, global_: bool, as_json: bool) -> None:
    """Overwrite the application's slash commands with the orchestrator's commands."""
    from bot.cli import echo_json
    from bot.commands import build_registry
    from bot.platforms.discord_platform import sync_commands
    from bot.settings import load_settings

    settings = load_settings()
    target = None if global_ else (guild_id or settings.discord.guild_id)
    from bot.commands.engine_commands import register_engine_commands

    # The engine's commands are listed too; they run in the daemon, not in this process.
    registry = build_registry(extensions=[lambda r: register_engine_commands(r, None, None)])
    result = asyncio.run(sync_commands(settings=settings.discord, registry=registry, guild_id=target))
    if as_json:
        echo_json(result)
        return
    where = f"guild {target}" if target else "global scope (may take up to an hour to appear)"
    click.echo(f"synced {len(result)} commands to {where}: " + ", ".join(f"/{c['name']}" for c in result))
