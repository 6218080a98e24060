"""Running the admin API inside the daemon: an AppRunner and one TCP site, stopped in order."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.app import create_app
from admin_api.state import ApiOptions, Services
from bot.events import EventBus
from bot.logs import get_logger
from bot.settings import Settings

_log = get_logger(__name__)


@dataclass
class AdminApiHandle:
    """A listening admin API: where it listens and how to stop it."""

    app: web.Application
    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """The URL clients on this machine use."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting, close WebSockets, finish in-flight requests, release the port."""
        await self.runner.cleanup()
        _log.info("admin_api.stopped", port=self.port)


async def start_admin_api(
    *,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    bus: EventBus,
    services: Services | None = None,
    options: ApiOptions | None = None,
) -> AdminApiHandle:
    """Listen on settings.admin_api.host:port (127.0.0.1 by default; port 0 picks a free one)."""
    app = create_app(settings=settings, session_factory=session_factory, bus=bus, services=services,
                     options=options)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.admin_api.host, settings.admin_api.port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1]) if runner.addresses else settings.admin_api.port
    _log.info("admin_api.listening", host=settings.admin_api.host, port=port)
    return AdminApiHandle(app=app, runner=runner, host=settings.admin_api.host, port=port)
