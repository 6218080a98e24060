"""Live streams over WebSocket: the monitor's readings and one task's engine events.

Each client gets its own bounded subscription on the event bus; a client that reads too slowly
loses the oldest events (the count is sent in `dropped`), never slows the engine. Clients
authenticate like every route (Authorization header; browsers may pass `?access_token=`).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

from admin_api.endpoint import Ctx, endpoint
from admin_api.problems import NotFound
from admin_api.state import BUS, SESSIONS
from bot.db.models import Task
from bot.events import Subscription

routes = web.RouteTableDef()
HEARTBEAT_S = 20.0


async def _pump(request: web.Request, subscription: Subscription) -> web.WebSocketResponse:
    socket = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=4096)
    await socket.prepare(request)
    reader = asyncio.create_task(_drain_client(socket))
    try:
        with subscription:
            while not socket.closed and not reader.done():
                getter = asyncio.ensure_future(subscription.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                message = getter.result().as_json()
                message["dropped"] = subscription.dropped
                await socket.send_json(message)
    except ConnectionResetError:  # expected: the client went away mid-send
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await socket.close()
    return socket


async def _drain_client(socket: web.WebSocketResponse) -> None:
    """Read (and ignore) client frames so pings, pongs and close are handled; end on close."""
    async for message in socket:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


@endpoint(routes, "GET", "/ws/monitor", summary="WebSocket: live monitor readings and alerts",
          tag="streams", scope="read", websocket=True,
          description="JSON text frames: {topic, kind, task_id, at, payload, dropped} for topics monitor and alert.")
async def monitor_stream(ctx: Ctx) -> web.StreamResponse:
    """Stream monitor and alert events as they are published."""
    subscription = ctx.request.app[BUS].subscribe(topics={"monitor", "alert"})
    return await _pump(ctx.request, subscription)


@endpoint(routes, "GET", "/ws/tasks/{id}", summary="WebSocket: one task's engine events", tag="streams",
          scope="read", websocket=True, problems=(NotFound,),
          description="JSON text frames of the engine's event stream for this task (planned, token, verdict, done…).")
async def task_stream(ctx: Ctx) -> web.StreamResponse:
    """Stream every event the engine publishes about this task."""
    task_id = ctx.path_int()
    subscription = ctx.request.app[BUS].subscribe(task_id=task_id)
    async with ctx.request.app[SESSIONS]() as session:
        if await session.get(Task, task_id) is None:
            subscription.close()
            raise NotFound(f"no task with id {task_id}")
    return await _pump(ctx.request, subscription)
