"""A real migrated database with people mapped to chat accounts, and the command core on top.

    async with chat_core(migrated_db) as core:
        core.dispatcher.handle_event(...)

People: `alice` admin, `oscar` operator, `vera` viewer (pt-BR), each linked on slack, discord and
console with the ids in `IDS`; anyone else is unknown.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.commands import CommandDispatcher, PermissionPolicy, Services, build_registry
from bot.db.engine import create_engine, session_factory
from bot.db.models import AuditLog, Language, User, UserIdentity, UserRole

IDS = {
    "alice": {"slack": "UALICE", "discord": "1001", "console": "alice"},
    "oscar": {"slack": "UOSCAR", "discord": "1002", "console": "oscar"},
    "vera": {"slack": "UVERA", "discord": "1003", "console": "vera"},
}
PEOPLE = {
    "alice": (UserRole.ADMIN, Language.EN),
    "oscar": (UserRole.OPERATOR, Language.EN),
    "vera": (UserRole.VIEWER, Language.PT_BR),
}


@dataclass
class ChatCore:
    """Engine, sessions and the dispatcher, ready for a platform."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    dispatcher: CommandDispatcher
    user_ids: dict[str, int]

    async def audit_rows(self) -> list[AuditLog]:
        """Every audit row, oldest first."""
        async with self.sessions() as session:
            return list((await session.execute(select(AuditLog).order_by(AuditLog.id))).scalars())

    async def add(self, *rows: Any) -> None:
        """Insert rows in one transaction."""
        async with self.sessions() as session:
            session.add_all(rows)
            await session.commit()


@contextlib.asynccontextmanager
async def chat_core(url: str, *, policy: PermissionPolicy | None = None) -> AsyncIterator[ChatCore]:
    """The command core on a migrated database with the three test people."""
    engine = create_engine(url)
    sessions = session_factory(engine)
    user_ids: dict[str, int] = {}
    async with sessions() as session:
        for name, (role, language) in PEOPLE.items():
            user = User(username=name, display_name=name.title(), role=role, language=language)
            session.add(user)
            await session.flush()
            user_ids[name] = user.id
            for platform, platform_id in IDS[name].items():
                session.add(UserIdentity(user_id=user.id, platform=platform, platform_user_id=platform_id))
        await session.commit()
    dispatcher = CommandDispatcher(
        registry=build_registry(),
        services=Services(session_factory=sessions),
        policy=policy or PermissionPolicy(),
    )
    try:
        yield ChatCore(engine=engine, sessions=sessions, dispatcher=dispatcher, user_ids=user_ids)
    finally:
        await engine.dispose()


_TEMPLATE_CACHE: dict[str, str] = {}


def migrated_sqlite_template(directory: str) -> str:
    """Path of a SQLite file at head with seed data, migrated once per test run and then copied."""
    import asyncio
    from pathlib import Path

    from bot.db.migrate import upgrade_to_head

    if "path" not in _TEMPLATE_CACHE:
        path = Path(directory) / "template.db"
        asyncio.run(upgrade_to_head(f"sqlite+aiosqlite:///{path}", backup_dir=None))
        _TEMPLATE_CACHE["path"] = str(path)
    return _TEMPLATE_CACHE["path"]


def fresh_sqlite_copy(template: str, target_dir: str) -> str:
    """A private copy of the migrated template for one test: its URL."""
    import shutil
    from pathlib import Path

    target = Path(target_dir) / "chat.db"
    shutil.copyfile(template, target)
    return f"sqlite+aiosqlite:///{target}"
