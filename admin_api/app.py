"""The application factory: typed state, the middleware chain, and every resource's routes."""

from __future__ import annotations

import importlib

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.auth import TokenAuthenticator
from admin_api.metrics import ApiMetrics
from admin_api.middleware import chain
from admin_api.ratelimit import RateLimiter
from admin_api.reader import Reader
from admin_api.state import (
    AUTH,
    BUS,
    DOC_CACHE,
    LIMITER,
    METRICS,
    OPTIONS,
    READER,
    SERVICES,
    SESSIONS,
    SETTINGS,
    ApiOptions,
    Services,
)
from bot.events import EventBus
from bot.settings import Settings

# Each module exposes `routes` (one RouteTableDef per resource); order is the docs' order.
ROUTE_MODULES = (
    "admin_api.ops",
    "admin_api.resources.providers",
    "admin_api.resources.models",
    "admin_api.resources.specialized_ais",
    "admin_api.resources.credentials",
    "admin_api.resources.tasks",
    "admin_api.resources.templates",
    "admin_api.resources.knowledge",
    "admin_api.resources.logs",
    "admin_api.resources.chat",
    "admin_api.resources.accounts",
    "admin_api.resources.users",
    "admin_api.resources.alerts",
    "admin_api.oauth",
    "admin_api.streams",
    "admin_api.chat_hooks",
)


def create_app(
    *,
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    bus: EventBus | None = None,
    services: Services | None = None,
    options: ApiOptions | None = None,
) -> web.Application:
    """Build the admin API application (not yet listening; see `start_admin_api`)."""
    options = options or ApiOptions()
    app = web.Application(middlewares=chain(options), client_max_size=options.max_body_bytes)
    app[SETTINGS] = settings
    app[SESSIONS] = session_factory
    app[BUS] = bus or EventBus()
    app[SERVICES] = services or Services()
    app[OPTIONS] = options
    app[AUTH] = TokenAuthenticator(session_factory=session_factory, cache_seconds=options.token_cache_seconds)
    app[LIMITER] = RateLimiter(rate_per_second=options.rate_per_second, burst=options.burst)
    app[METRICS] = ApiMetrics()
    app[DOC_CACHE] = {}
    reader = Reader(session_factory.kw["bind"], totals_ttl=options.count_cache_seconds)
    app[READER] = reader

    async def _close_reader(_app: web.Application) -> None:
        reader.dispose()

    app.on_cleanup.append(_close_reader)
    for module_name in ROUTE_MODULES:
        app.router.add_routes(importlib.import_module(module_name).routes)
    return app
