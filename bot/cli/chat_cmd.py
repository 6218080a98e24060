"""`orchestrator chat`: talk to the orchestrator in this terminal, with the same commands as Slack/Discord.

Whoever runs the CLI on this host can read the database directly, so the console acts as a
database user of their choice (`--as`, default: the first active admin); the terminal account is
linked to that user as a `console` identity, and every command is audited like any other.
"""

from __future__ import annotations

import asyncio
import getpass

import click

from bot.errors import OrchestratorError


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

    from sqlalchemy import select

    from bot.commands import CommandDispatcher, PermissionPolicy, Services, build_registry
    from bot.commands.permissions import link_identity
    from bot.db.engine import create_engine, session_factory
    from bot.db.migrate import upgrade_to_head
    from bot.db.models import User, UserRole
    from bot.logs import configure_logging
    from bot.platforms.console import ConsolePlatform
    from bot.platforms.events import Sender
    from bot.platforms.i18n import translate
    from bot.settings import load_settings

    settings = load_settings()
    configure_logging(level="WARNING", fmt=settings.log.format)
    url = settings.effective_database_url
    await upgrade_to_head(url, backup_dir=settings.data_dir / "backups", settings=settings)
    engine = create_engine(url, settings=settings.database)
    try:
        factory = session_factory(engine)
        terminal_user = getpass.getuser()
        async with factory() as session:
            statement = select(User).where(User.is_active.is_(True))
            if username:
                statement = statement.where(User.username == username)
            else:
                statement = statement.where(User.role == UserRole.ADMIN).order_by(User.id)
            user = (await session.execute(statement)).scalars().first()
            if user is None:
                raise OrchestratorError(
                    f"no active user {username!r}" if username else "there is no active admin user",
                    hint="run `orchestrator migrate` to create the default admin, or pass --as <username>",
                )
            sender = Sender(platform="console", user_id=terminal_user, display_name=terminal_user)
            await link_identity(session, user_id=user.id, sender=sender)
            await session.commit()
            role, language, name = str(user.role), str(user.language), user.username
        dispatcher = CommandDispatcher(
            registry=build_registry(),
            services=Services(session_factory=factory, settings=settings),
            policy=PermissionPolicy(default_language=settings.language),
        )
        console = ConsolePlatform(
            sink=dispatcher.handle_event,
            user_id=terminal_user,
            display_name=terminal_user,
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
        await engine.dispose()
