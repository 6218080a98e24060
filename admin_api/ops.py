"""Operations: liveness, readiness, Prometheus metrics, the engine's workers, the OpenAPI document
and its docs page."""

from __future__ import annotations

import json
from collections import Counter
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from admin_api.endpoint import Ctx, Reply, endpoint
from admin_api.openapi import DOCS_HTML, build_document
from admin_api.problems import ValidationFailed
from admin_api.state import BUS, DOC_CACHE, METRICS, SERVICES, SESSIONS
from bot.db.models import Alert, AlertStatus, CreditUsage, Task, TaskStatus
from bot.engine.queue.roster import WorkerState, list_workers

routes = web.RouteTableDef()
TAG = "operations"
_WAITING = (TaskStatus.PENDING, TaskStatus.PLANNING, TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.PAUSED)


class Health(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether the daemon can serve: the database answers, and which optional parts are wired."""

    status: Literal["ready", "not_ready"]
    database: bool
    components: dict[str, bool]


@endpoint(routes, "GET", "/healthz", summary="Liveness: the process answers", tag=TAG, scope=None,
          response=Health)
async def healthz(ctx: Ctx) -> Health:
    """Liveness probe; touches nothing so it stays cheap."""
    return Health(status="ok")


@endpoint(routes, "GET", "/readyz", summary="Readiness: the database answers", tag=TAG, scope=None,
          response=Readiness, description="503 with the same body when the database does not answer.")
async def readyz(ctx: Ctx) -> Reply:
    """Readiness probe: a query against the database."""
    try:
        async with ctx.request.app[SESSIONS]() as session:
            await session.execute(text("SELECT 1"))
        database = True
    except (SQLAlchemyError, OSError):  # expected when the DB is down: report, do not raise
        database = False
    services = ctx.request.app[SERVICES]
    readiness = Readiness(
        status="ready" if database else "not_ready",
        database=database,
        components={"vault": services.vault is not None, "queue": services.queue is not None,
                    "providers": services.providers is not None},
    )
    return Reply(readiness, status=200 if database else 503)


class WorkersQuery(BaseModel):
    """`all=true` lists workers that stopped too."""

    model_config = ConfigDict(extra="forbid")

    all: bool = False


class WorkerList(BaseModel):
    """The workers, oldest first: `running` (heartbeat younger than a lease), `silent` (killed or
    host gone; its jobs are reclaimed when their leases expire) or `stopped`."""

    items: list[WorkerState]


@endpoint(routes, "GET", "/workers", summary="The engine's workers and whether they are alive", tag=TAG,
          scope="read", query=WorkersQuery, response=WorkerList, problems=(ValidationFailed,))
async def workers(ctx: Ctx) -> WorkerList:
    """Every daemon and worker process sharing this database, from their heartbeats."""
    query = ctx.query_as(WorkersQuery)
    async with ctx.request.app[SESSIONS]() as session:
        found = await list_workers(session, include_stopped=query.all)
    return WorkerList(items=found)


@endpoint(routes, "GET", "/metrics", summary="Prometheus metrics", tag=TAG, scope="read",
          raw_response="text/plain")
async def metrics(ctx: Ctx) -> web.Response:
    """Refresh the gauges that come from the database and the bus, then expose everything."""
    app = ctx.request.app
    api_metrics = app[METRICS]
    async with app[SESSIONS]() as session:
        by_status = dict(
            (await session.execute(
                select(Task.status, func.count()).where(Task.status.in_(_WAITING)).group_by(Task.status)
            )).all()
        )
        for status in _WAITING:
            api_metrics.queue_depth.labels(status.value).set(by_status.get(status, 0))
        calls = (await session.execute(
            select(CreditUsage.provider_id, func.count()).group_by(CreditUsage.provider_id)
        )).all()
        for provider_id, count in calls:
            api_metrics.model_calls.labels(str(provider_id) if provider_id is not None else "none").set(count)
        prompt, completion = (await session.execute(
            select(func.coalesce(func.sum(CreditUsage.prompt_tokens), 0),
                   func.coalesce(func.sum(CreditUsage.completion_tokens), 0))
        )).one()
        api_metrics.model_tokens.labels("prompt").set(int(prompt))
        api_metrics.model_tokens.labels("completion").set(int(completion))
        alerts = (await session.execute(
            select(Alert.severity, func.count()).where(Alert.status != AlertStatus.RESOLVED).group_by(Alert.severity)
        )).all()
        for severity, count in alerts:
            api_metrics.open_alerts.labels(str(severity.value if hasattr(severity, "value") else severity)).set(count)
        states = Counter(worker.state for worker in await list_workers(session))
        for state in ("running", "silent"):
            api_metrics.workers.labels(state).set(states[state])
    bus = app[BUS]
    api_metrics.events_published.set(bus.published_total)
    api_metrics.events_dropped.set(bus.dropped_total)
    api_metrics.events_relayed.set(bus.relayed_total)
    api_metrics.subscribers.set(bus.subscriber_count)
    body = generate_latest(api_metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@endpoint(routes, "GET", "/openapi.json", summary="This API's OpenAPI 3.1 document", tag=TAG,
          scope="read", raw_response="application/json")
async def openapi_json(ctx: Ctx) -> web.Response:
    """The generated document (built once per app, the routes do not change after start-up)."""
    cache = ctx.request.app[DOC_CACHE]
    if "openapi" not in cache:
        cache["openapi"] = json.dumps(build_document(ctx.request.app)).encode()
    document = cache["openapi"]
    return web.Response(body=document, content_type="application/json")


@endpoint(routes, "GET", "/docs", summary="Docs page (a static shell; loads the document with your token)",
          tag=TAG, scope=None, raw_response="text/html")
async def docs(ctx: Ctx) -> web.Response:
    """A self-contained page (no CDN) that lists the operations of /openapi.json."""
    return web.Response(text=DOCS_HTML, content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                 "style-src 'unsafe-inline'; connect-src 'self'"})

