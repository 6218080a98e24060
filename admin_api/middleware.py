"""The middleware chain, outermost first: request id → metrics and access log → CORS → problem
boundary → auth → rate limit.

Every request passes all of them, so they run as one aiohttp middleware (`chain(options)` returns
it) with two stages instead of six nested middlewares: each aiohttp middleware costs a partial,
a coroutine and an await per request. `api_middleware` is the outer part (request id, metrics,
access log, CORS), `_guarded` the inner part (problem boundary, auth, rate limit); the order and
what each step sees are those of the chain above.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from multidict import istr
from structlog.contextvars import bind_contextvars, unbind_contextvars

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
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$").match
# Header names as istr: multidict looks them up without case-folding the name on every request.
_X_REQUEST_ID = istr("X-Request-ID")
_CORS_EXPOSE = "Link, X-Request-ID, X-Total-Count, Retry-After"
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


def _bearer(request: web.Request, *, allow_query: bool) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_query:  # browsers cannot set headers on WebSockets; only WS routes accept this
        return request.query.get("access_token") or None
    return None


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Problem boundary around auth, rate limit and the handler: every failure leaves as
    application/problem+json.

    Auth: resolve the bearer token and check the route's scope; only public routes (and OPTIONS)
    skip it. Rate limit: an authenticated token's requests beyond its bucket get 429 and
    Retry-After.
    """
    try:
        operation = operation_of(request.match_info.handler)
        if request.method != "OPTIONS" and (operation is None or operation.scope is not None):
            token = _bearer(request, allow_query=operation is not None and operation.websocket)
            if token is None:
                raise Unauthenticated(
                    "send Authorization: Bearer <token> (create one with `orchestrator tokens create`)")
            app = request.app
            auth = app[AUTH]
            principal = auth.cached(token) or await auth.authenticate(token)
            if principal is None:
                raise Unauthenticated("the token is unknown, expired or revoked")
            request[PRINCIPAL] = principal
            if operation is not None and not principal.has(operation.scope):  # type: ignore[arg-type]
                raise InsufficientScope(f"this route needs the {operation.scope!r} scope")
            limiter = app[LIMITER]
            wait = limiter.wait_after_spending(principal.token_id)
            if wait is not None:
                app[METRICS].rate_limited.inc()
                retry = max(1, int(wait + 0.999))
                raise RateLimited(
                    f"this token may send {limiter.rate:g} requests per second; retry later",
                    headers={"Retry-After": str(retry)},
                )
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


async def _cors(request: web.Request, handler: Handler, allowed: frozenset[str]) -> web.StreamResponse:
    """CORS for the listed origins only (the API ships with none: browsers elsewhere are refused)."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or ("*" not in allowed and origin not in allowed):
        return await _guarded(request, handler)
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
        headers.update({
            "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-ID",
            "Access-Control-Max-Age": "600",
        })
        return web.Response(status=204, headers=headers)
    response = await _guarded(request, handler)
    response.headers.update(headers)
    response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
    return response


def chain(options: ApiOptions) -> list[Middleware]:
    """The API's middleware (CORS only when origins are configured)."""
    allowed = frozenset(options.cors_origins)

    @web.middleware
    async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Request id, metrics and access log around CORS and `_guarded`.

        Request id: adopt a sane incoming X-Request-ID or mint one; echo it and bind it to every
        log line. Metrics: count and latency per route pattern; access log: one structured line
        per request (method, route, status, duration, caller — never the query). One clock read
        each way.
        """
        incoming = request.headers.get(_X_REQUEST_ID)
        request_id = incoming if incoming and _REQUEST_ID_OK(incoming) else f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"
        request[REQUEST_ID] = request_id
        bind_contextvars(request_id=request_id)
        try:
            started = time.perf_counter()
            status = 500
            try:
                response = await (_cors(request, handler, allowed) if allowed else _guarded(request, handler))
                status = response.status
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
        finally:
            unbind_contextvars("request_id")
        response.headers[_X_REQUEST_ID] = request_id
        return response

    return [api_middleware]
