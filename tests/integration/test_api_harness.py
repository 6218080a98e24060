"""Shared set-up for the admin API tests: a real app on 127.0.0.1 over a migrated database.

No test functions live here; the `api` fixture is imported by the test_api_* modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from admin_api import ApiOptions, Services, create_app
from admin_api.auth import mint_token
from bot.db.engine import create_engine, session_factory
from bot.db.models import User, UserRole
from bot.events import EventBus
from bot.settings import Settings
from bot.vault import Vault, load_keyring


@dataclass
class Api:
    """A running admin API with one token per scope."""

    client: TestClient[Any, Any]
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    bus: EventBus
    vault: Vault
    user_id: int
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, scope: str = "admin") -> dict[str, str]:
        """Headers carrying the token with `scope`."""
        return {"Authorization": f"Bearer {self.tokens[scope]}"}

    async def call(
        self, method: str, path: str, *, scope: str = "admin", expect: int | None = None, **kwargs: Any
    ) -> tuple[int, Any, Any]:
        """Send a request; return (status, parsed body or None, headers)."""
        headers = {**self.auth(scope), **kwargs.pop("headers", {})}
        async with self.client.request(method, path, headers=headers, allow_redirects=False, **kwargs) as response:
            raw = await response.read()
            body: Any = None
            if raw and response.content_type in ("application/json", "application/problem+json"):
                body = await response.json(content_type=None)
            if expect is not None:
                assert response.status == expect, (response.status, raw[:2000])
            return response.status, body, response.headers


async def make_api(
    url: str, tmp_path: Path, *, options: ApiOptions | None = None, services: dict[str, Any] | None = None,
    settings_overrides: dict[str, Any] | None = None,
) -> Api:
    """Build and start the API over `url` (already migrated); `settings_overrides` are Settings fields."""
    engine = create_engine(url)
    sessions = session_factory(engine)
    vault = Vault(keyring=load_keyring(path=tmp_path / "keyring.json", create=True))
    bus = EventBus()
    settings = Settings(data_dir=tmp_path, **(settings_overrides or {}))
    app = create_app(
        settings=settings,
        session_factory=sessions,
        bus=bus,
        services=Services(vault=vault, **(services or {})),
        options=options or ApiOptions(rate_per_second=10_000, burst=10_000, token_cache_seconds=0),
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    async with sessions() as session:
        admin = (await session.execute(select(User).where(User.role == UserRole.ADMIN).limit(1))).scalar_one()
        api = Api(client=client, engine=engine, sessions=sessions, bus=bus, vault=vault, user_id=admin.id)
        for scope in ("read", "write", "admin"):
            api.tokens[scope] = (
                await mint_token(session, user_id=admin.id, name=f"test-{scope}", scopes=[scope])
            ).secret
        await session.commit()
    return api


async def close_api(api: Api) -> None:
    """Stop the server and release the database."""
    await api.client.close()
    await api.engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def shared_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One migrated database per module and backend (migrating takes seconds; tests share it)."""
    import asyncio
    import uuid

    from bot.db.migrate import upgrade_to_head
    from tests.conftest import MARIADB_HOST, MARIADB_PORT, _admin_execute, require_mariadb

    name = ""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'orchestrator.db'}"
    else:
        require_mariadb()
        name = f"orch_api_{uuid.uuid4().hex[:12]}"
        _admin_execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        url = f"mysql+aiomysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    try:
        asyncio.run(upgrade_to_head(url, backup_dir=None))
        yield url
    finally:
        if name:
            _admin_execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
async def api(shared_db: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Api]:
    """The admin API over the module's migrated database (SQLite and MariaDB)."""
    running = await make_api(shared_db, tmp_path_factory.getbasetemp())
    try:
        yield running
    finally:
        await close_api(running)
