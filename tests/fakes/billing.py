"""Billing APIs at the wire: OpenRouter's `/api/v1/key` and `/api/v1/credits`, OpenAI's
`/v1/organization/costs` (paged), each answering 401 to any key but the expected one.

Shapes follow the providers' documentation: OpenRouter wraps both answers in `data`
(`total_credits`/`total_usage`; `limit`, `limit_remaining`, `usage`, `is_free_tier`…), and
`/credits` needs a management key (an ordinary key gets 403). OpenAI answers
`{"object": "page", "data": [bucket…], "has_more", "next_page"}` with buckets of
`organization.costs.result` amounts.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes._loopback import LoopbackServer


def _authorised(request: web.Request, key: str) -> bool:
    return request.headers.get("Authorization") == f"Bearer {key}"


class FakeOpenRouter(LoopbackServer):
    """OpenRouter's key and credits endpoints under /api/v1."""

    def __init__(self, *, key: str, management: bool = True, total_credits: float = 100.5,
                 total_usage: float = 25.75, limit: float | None = 40.0, usage: float = 12.5,
                 key_endpoint_open: bool = True) -> None:
        super().__init__()
        self.key, self.management = key, management
        # False: /key refuses this (management) key, as OpenRouter documents for management keys.
        self.key_endpoint_open = key_endpoint_open
        self.total_credits, self.total_usage = total_credits, total_usage
        self.limit, self.usage = limit, usage
        self.paths: list[str] = []

    @property
    def base_url(self) -> str:
        """What the orchestrator is configured with (`[credits] base_urls.openrouter`)."""
        return f"{self.url}/api/v1"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/key", self._key)
        app.router.add_get("/api/v1/credits", self._credits)
        return app

    async def _key(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        if not _authorised(request, self.key) or not self.key_endpoint_open:
            return web.json_response({"error": {"code": 401, "message": "No auth credentials found"}}, status=401)
        data: dict[str, Any] = {
            "label": f"{self.key[:10]}...{self.key[-3:]}", "limit": self.limit, "usage": self.usage,
            "limit_remaining": None if self.limit is None else self.limit - self.usage, "limit_reset": None,
            "include_byok_in_limit": False, "usage_daily": 1.0, "usage_weekly": 2.0, "usage_monthly": 3.0,
            "byok_usage": 0, "is_free_tier": False, "is_provisioning_key": False,
            "rate_limit": {"requests": 1000, "interval": "1h"},
        }
        return web.json_response({"data": data})

    async def _credits(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        if not _authorised(request, self.key):
            return web.json_response({"error": {"code": 401, "message": "No auth credentials found"}}, status=401)
        if not self.management:
            return web.json_response({"error": {"code": 403, "message": "Only management keys can fetch credits"}},
                                     status=403)
        return web.json_response({"data": {"total_credits": self.total_credits, "total_usage": self.total_usage}})


class FakeOpenAICosts(LoopbackServer):
    """OpenAI's organization costs endpoint under /v1, `per_page` buckets per page."""

    def __init__(self, *, key: str, daily: list[float], per_page: int = 2) -> None:
        super().__init__()
        self.key, self.daily, self.per_page = key, daily, per_page
        self.queries: list[dict[str, str]] = []

    @property
    def base_url(self) -> str:
        """What the orchestrator is configured with (`[credits] base_urls.openai`)."""
        return f"{self.url}/v1"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/organization/costs", self._costs)
        return app

    async def _costs(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if not _authorised(request, self.key):
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error",
                     "code": "invalid_api_key"}
            return web.json_response({"error": error}, status=401)
        start = int(request.query["start_time"])
        offset = int(request.query.get("page", "0").removeprefix("page_") or 0)
        chosen = self.daily[offset:offset + self.per_page]
        day = 86400
        buckets = [{
            "object": "bucket", "start_time": start + day * (offset + i), "end_time": start + day * (offset + i + 1),
            "results": [{"object": "organization.costs.result", "amount": {"value": value, "currency": "usd"},
                         "line_item": None, "project_id": None}],
        } for i, value in enumerate(chosen)]
        more = offset + self.per_page < len(self.daily)
        return web.json_response({"object": "page", "data": buckets, "has_more": more,
                                  "next_page": f"page_{offset + self.per_page}" if more else None})
