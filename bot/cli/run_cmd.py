"""`orchestrator run`: the always-on daemon."""

from __future__ import annotations

import asyncio

import click

from bot.logs import configure_logging
from bot.settings import load_settings


@click.command()
@click.option("--no-migrate", is_flag=True, help="Refuse to start unless the schema is already at head.")
def run(no_migrate: bool) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C.

    On first start it creates the data directory, the SQLite database and the keyring, and
    upgrades the schema (backing up an existing database first).
    """
    import sys

    from bot.app import run_daemon

    settings = load_settings()
    console = sys.stdin.isatty() and settings.slack.bot_token is None and settings.discord.bot_token is None
    # With the console on this terminal, only warnings are printed so they do not bury the prompt;
    # everything the engine does is still in execution_logs (/logs).
    configure_logging(level="WARNING" if console else settings.log.level, fmt=settings.log.format)
    if console:
        click.echo("orchestrator: starting (console mode; /help lists commands, Ctrl-D stops the daemon)", err=True)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    asyncio.run(run_daemon(settings, migrate=not no_migrate))


@click.command()
@click.option("--concurrency", type=click.IntRange(1, 256), default=None,
              help="Subtasks this worker runs at once (default: [engine] max_concurrency).")
@click.option("--parent", type=int, default=None, hidden=True,
              help="The daemon that started this worker: stop when it is gone.")
def worker(concurrency: int | None, parent: int | None) -> None:
    """Run an engine-only worker until SIGTERM or Ctrl-C.

    It claims and runs tasks from the shared database and relays their events to the daemon that
    follows them; it never migrates the schema, and talks to no chat platform. Start several on one
    host (`[engine] worker_processes` does it for the daemon) or on other hosts sharing MariaDB.
    """
    from bot.app import run_daemon

    settings = load_settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"engine": settings.engine.model_copy(
            update={"max_concurrency": concurrency})})
    configure_logging(level=settings.log.level, fmt=settings.log.format)
    asyncio.run(run_daemon(settings, migrate=False, worker_only=True, parent_pid=parent))
