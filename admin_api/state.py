"""Typed application state (`web.AppKey`) and the per-request keys every module shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from admin_api.auth import Principal, TokenAuthenticator
from admin_api.metrics import ApiMetrics
from admin_api.ratelimit import RateLimiter
from admin_api.reader import Reader
from bot.events import EventBus
from bot.settings import Settings


@dataclass(frozen=True)
class ApiOptions:
    """Knobs of the API that are not (yet) in the settings file; defaults are the safe ones.

    CORS is off unless origins are listed; the rate limit is per token (a bucket of `burst`
    requests refilled at `rate_per_second`).
    """

    cors_origins: tuple[str, ...] = ()
    rate_per_second: float = 50.0
    burst: int = 200
    max_body_bytes: int = 1024 * 1024
    token_cache_seconds: float = 5.0
    count_cache_seconds: float = 2.0  # how long a list's total is reused (writes through the API reset it)
    oauth_state_ttl_seconds: int = 600


@dataclass(frozen=True)
class Services:
    """Optional collaborators the daemon passes in; absent ones make their endpoints answer 503."""

    vault: Any = None  # bot.vault.Vault
    queue: Any = None  # bot.engine.queue durable queue
    providers: Any = None  # bot.engine.providers registry/router
    notifier: Any = None  # async callable(user_id, text) that tells a chat user something
    embedder: Any = None  # an LLMProvider (`embed(model, texts)`) for semantic knowledge search
    extra: Any = None


SETTINGS = web.AppKey("settings", Settings)
SESSIONS = web.AppKey("sessions", async_sessionmaker[AsyncSession])
BUS = web.AppKey("bus", EventBus)
OPTIONS = web.AppKey("options", ApiOptions)
SERVICES = web.AppKey("services", Services)
AUTH = web.AppKey("auth", TokenAuthenticator)
METRICS = web.AppKey("metrics", ApiMetrics)
LIMITER = web.AppKey("limiter", RateLimiter)
DOC_CACHE = web.AppKey("doc_cache", dict[str, bytes])
READER = web.AppKey("reader", Reader)

# Per-request values.
PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
