"""`orchestrator chat`: talk to the orchestrator in this terminal, with the same commands as Slack/Discord.

Whoever runs the CLI on this host can read the database directly, so the console acts as a
database user of their choice (`--as`, default: the first active admin); the terminal account is
linked to that user as a `console` identity, and every command is audited like any other.
"""

from __future__ import annotations

import asyncio

import click


@click.command()
@click.option("--as", "username", default=None, help="Act as this user (default: the first active admin).")
@click.option(
    "-c",
    "--command",
    "commands",
    multiple=True,
    help='Run this line (e.g. "/status") and exit; may be repeated.',
)
def chat(username: str | None, commands: tuple[str, ...]) -> None:
    """Talk to the orchestrator in this terminal (no Slack or Discord token needed)."""
    asyncio.run(_chat(username=username, commands=commands))


async def _chat(*, username: str | None, commands: tuple[str, ...]) -> None:
    import sys

    from bot.commands.wiring import build_dispatcher, console_user
    from bot.db.engine import create_engine, session_factory
    from bot.db.migrate import upgrade_to_head
    from bot.engine.runtime import EngineRuntime
    from bot.events import EventBus
    from bot.logs import configure_logging
    from bot.platforms.console import ConsolePlatform
    from bot.platforms.i18n import translate
    from bot.settings import load_settings

    settings = load_settings()
    configure_logging(level="WARNING", fmt=settings.log.format)
    url = settings.effective_database_url
    await upgrade_to_head(url, backup_dir=settings.data_dir / "backups", settings=settings)
    engine = create_engine(url, settings=settings.database)
    bus = EventBus()
    factory = session_factory(engine)
    # The console runs its own engine worker: with a daemon on the same database they share the queue.
    runtime = EngineRuntime(settings=settings, db_engine=engine, sessions=factory, bus=bus)
    try:
        await runtime.start()
        for notice in runtime.notices:
            click.echo(f"note: {notice}", err=True)
        user, sender = await console_user(factory, username=username)
        role, language, name = str(user.role), str(user.language), user.username
        _registry, dispatcher = build_dispatcher(settings=settings, sessions=factory, engine=runtime.engine, bus=bus)
        console = ConsolePlatform(
            sink=dispatcher.handle_event,
            user_id=sender.user_id,
            display_name=sender.display_name,
            output=sys.stdout,
            files_dir=settings.data_dir / "console-files",
            language=language,
        )
        await console.start()
        try:
            if commands:
                for line in commands:
                    await console.submit(line)
                return
            click.echo(translate("console.welcome", language, username=name, role=role))
            await console.repl()
        finally:
            await console.stop()
    finally:
        await runtime.stop()
        await engine.dispose()
