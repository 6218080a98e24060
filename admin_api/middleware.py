"""The middleware chain, outermost first: request id → metrics and access log → CORS → problem
boundary → auth → rate limit. Each is one small function; `chain(options)` returns them in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from admin_api.endpoint import operation_of
from admin_api.problems import (
    ApiProblem,
    InsufficientScope,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
)
from admin_api.state import AUTH, LIMITER, METRICS, PRINCIPAL, REQUEST_ID, ApiOptions
from bot.logs import get_logger

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Request ids need to be unique, not secret: a random per-process prefix and a counter (32 hex
# characters, like a UUID) cost a fraction of uuid4's read of os.urandom per request.
_ID_PREFIX = uuid.uuid4().hex[:20]
_ID_COUNTER = itertools.count(1)
_access_stdlib = logging.getLogger("admin_api.access")
_access_log = get_logger("admin_api.access")
_log = get_logger(__name__)


def route_label(request: web.Request) -> str:
    """The route pattern (not the concrete path), so metrics stay low-cardinality."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Adopt a sane incoming X-Request-ID or mint one; echo it and bind it to every log line."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if incoming and _REQUEST_ID_OK.match(incoming) else f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    response.headers["X-Request-ID"] = request_id
    return response


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Metrics (count and latency per route pattern) and one structured access-log line per request:
    method, route, status, duration, caller — never the query. One middleware, one clock read each way.
    """
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        elapsed = time.perf_counter() - started
        route = route_label(request)
        request.app[METRICS].observe(method=request.method, route=route, status=status, seconds=elapsed)
        if _access_stdlib.isEnabledFor(logging.INFO):
            principal = request.get(PRINCIPAL)
            _access_log.info(
                "http.request",
                method=request.method,
                path=request.path,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                token_id=principal.token_id if principal else None,
                remote=request.remote,
            )


def _problem_from_http(exc: web.HTTPException) -> ApiProblem:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no route matches this path")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(f"use one of: {allowed}", headers={"Allow": allowed})
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("the body is larger than the API accepts")
    problem = ApiProblem(exc.reason or "request refused")
    problem.status = exc.status  # type: ignore[misc]
    return problem


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API's one error boundary: every failure leaves as application/problem+json."""
    try:
        return await handler(request)
    except ApiProblem as problem:  # expected: the caller can act on it; no traceback
        return problem.response(instance=request.path, request_id=request.get(REQUEST_ID))
    except web.HTTPException as exc:  # aiohttp's own answers (no route, body too large)
        if exc.status < 400:
            raise
        return _problem_from_http(exc).response(instance=request.path, request_id=request.get(REQUEST_ID))
    except asyncio.CancelledError:
        raise
    except Exception:  # the one broad catch: a bug; log it with traceback, tell the caller little
        _log.exception("http.unhandled_error", method=request.method, route=route_label(request))
        return InternalError(
            "the server failed; quote the request id when reporting it"
        ).response(instance=request.path, request_id=request.get(REQUEST_ID))


def _bearer(request: web.Request, *, allow_query: bool) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_query:  # browsers cannot set headers on WebSockets; only WS routes accept this
        return request.query.get("access_token") or None
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the bearer token and check the route's scope; only public routes skip this."""
    operation = operation_of(request.match_info.handler)
    if request.method == "OPTIONS" or (operation is not None and operation.scope is None):
        return await handler(request)
    token = _bearer(request, allow_query=operation is not None and operation.websocket)
    if token is None:
        raise Unauthenticated("send Authorization: Bearer <token> (create one with `orchestrator tokens create`)")
    principal = await request.app[AUTH].authenticate(token)
    if principal is None:
        raise Unauthenticated("the token is unknown, expired or revoked")
    request[PRINCIPAL] = principal
    if operation is not None and operation.scope is not None and not principal.has(operation.scope):
        raise InsufficientScope(f"this route needs the {operation.scope!r} scope")
    return await handler(request)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a token's requests beyond its bucket with 429 and Retry-After."""
    principal = request.get(PRINCIPAL)
    if principal is not None:
        decision = request.app[LIMITER].take(principal.token_id)
        if not decision.allowed:
            request.app[METRICS].rate_limited.inc()
            retry = max(1, int(decision.retry_after_s + 0.999))
            raise RateLimited(
                f"this token may send {request.app[LIMITER].rate:g} requests per second; retry later",
                headers={"Retry-After": str(retry)},
            )
    return await handler(request)


def cors_middleware(origins: tuple[str, ...]) -> Middleware:
    """CORS for the listed origins only (the API ships with none: browsers elsewhere are refused)."""
    allowed = frozenset(origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or ("*" not in allowed and origin not in allowed):
            return await handler(request)
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers.update({
                "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-ID",
                "Access-Control-Max-Age": "600",
            })
            return web.Response(status=204, headers=headers)
        response = await handler(request)
        response.headers.update(headers)
        response.headers["Access-Control-Expose-Headers"] = "Link, X-Request-ID, X-Total-Count, Retry-After"
        return response

    return cors


def chain(options: ApiOptions) -> list[Middleware]:
    """The middlewares in order, CORS only when origins are configured."""
    middlewares: list[Middleware] = [request_id_middleware, observe_middleware]
    if options.cors_origins:
        middlewares.append(cors_middleware(options.cors_origins))
    middlewares += [problem_middleware, auth_middleware, rate_limit_middleware]
    return middlewares
