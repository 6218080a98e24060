"""Building the command dispatcher the same way for the daemon, `orchestrator chat` and Discord sync."""

from __future__ import annotations

import getpass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.commands import CommandDispatcher, CommandRegistry, PermissionPolicy, Services, build_registry
from bot.commands.permissions import link_identity
from bot.db.models import User, UserRole
from bot.errors import OrchestratorError
from bot.platforms.events import Sender
from bot.settings import Settings


def build_dispatcher(
    *, settings: Settings, sessions: async_sessionmaker[AsyncSession], engine: Any = None, bus: Any = None,
    components: dict[str, Any] | None = None,
) -> tuple[CommandRegistry, CommandDispatcher]:
    """Every command (the engine's too when an engine runs) behind one permission policy."""
    extensions = []
    threads = None
    if engine is not None and bus is not None:
        from bot.commands.engine_commands import register_engine_commands
        from bot.commands.threads import TaskThreads

        threads = TaskThreads(engine=engine, bus=bus)
        extensions.append(lambda registry: register_engine_commands(registry, engine, bus, threads))
    registry = build_registry(extensions=extensions)
    role = settings.chat.unknown_user_role
    dispatcher = CommandDispatcher(
        registry=registry,
        services=Services(session_factory=sessions, settings=settings,
                          components={"engine": engine, "bus": bus, "threads": threads, **(components or {})}),
        policy=PermissionPolicy(unknown_user_role=UserRole(role) if role else None,
                                default_language=settings.language),
    )
    if threads is not None:
        threads.install(dispatcher)  # follow-ups in task threads, dispute buttons
    return registry, dispatcher


async def console_user(sessions: async_sessionmaker[AsyncSession], *, username: str | None) -> tuple[User, Sender]:
    """The database user the terminal acts as (default: the first active admin), linked as `console`."""
    terminal_user = getpass.getuser()
    async with sessions() as session:
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
    return user, sender
