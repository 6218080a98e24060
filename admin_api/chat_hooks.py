"""Slack's and Discord's HTTP endpoints: requests signed by the platforms, handed to their adapters.

No bearer token here: Slack signs with the signing secret (v0 HMAC, 5-minute window) and Discord
with Ed25519; the platform adapters in bot/platforms verify every request before anything runs.
The daemon's chat component registers the running adapters in `Services.extra["chat"]`.
"""

from __future__ import annotations

from aiohttp import web

from admin_api.endpoint import Ctx, endpoint
from admin_api.problems import NotFound
from admin_api.state import SERVICES

routes = web.RouteTableDef()
TAG = "chat"
MAX_BODY = 1024 * 1024


async def _forward(ctx: Ctx, platform: str) -> web.StreamResponse:
    extra = ctx.request.app[SERVICES].extra or {}
    adapter = (extra.get("chat") or {}).get(platform)
    if adapter is None:
        raise NotFound(f"{platform} HTTP mode is not configured in this daemon (no {platform} bot token)")
    body = await ctx.request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        return web.Response(status=413, text="request body too large")
    status, headers, payload = await adapter.handle_http(body, dict(ctx.request.headers))
    return web.Response(status=status, headers=headers, body=payload)


@endpoint(routes, "POST", "/slack/events", summary="Slack events, slash commands and interactivity", tag=TAG,
          scope=None, raw_response="application/json",
          description="Verified with the app's signing secret; acknowledged within 3 s.")
async def slack_events(ctx: Ctx) -> web.StreamResponse:
    """Hand a signed Slack request to the Slack adapter."""
    return await _forward(ctx, "slack")


@endpoint(routes, "POST", "/discord/interactions", summary="Discord interactions endpoint", tag=TAG, scope=None,
          raw_response="application/json", description="Verified with the application's Ed25519 public key.")
async def discord_interactions(ctx: Ctx) -> web.StreamResponse:
    """Hand a signed Discord interaction to the Discord adapter."""
    return await _forward(ctx, "discord")
