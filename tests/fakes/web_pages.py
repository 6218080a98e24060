"""A tiny web site on 127.0.0.1 for knowledge-source fetching: pages, redirects and errors as set.

    async with WebPages() as site:
        site.page("/notes.md", "# Notes\n\ntext", content_type="text/markdown")
        site.redirect("/hop", "http://169.254.169.254/latest/meta-data/")
        site.page("/private.md", "# Private", require={"Authorization": "Bearer t0ken"})  # else 401

Every request's headers are kept in `received` (path, headers), so tests can check what crossed
the socket — and what did not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tests.fakes._loopback import LoopbackServer


@dataclass
class Page:
    """What one path answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)
    require: dict[str, str] = field(default_factory=dict)  # headers a request must carry, else 401


class WebPages(LoopbackServer):
    """Serves whatever pages the test put in `pages`; records the Host header of each request."""

    def __init__(self) -> None:
        super().__init__()
        self.pages: dict[str, Page] = {}
        self.requests: list[tuple[str, str]] = []
        self.received: list[tuple[str, dict[str, str]]] = []

    def page(self, path: str, text: str | bytes, *, content_type: str = "text/plain", status: int = 200,
             require: dict[str, str] | None = None) -> None:
        """Serve `text` at `path` (only to requests carrying every header in `require`)."""
        body = text.encode() if isinstance(text, str) else text
        self.pages[path] = Page(status=status, body=body, content_type=content_type, require=dict(require or {}))

    def redirect(self, path: str, location: str, *, status: int = 302) -> None:
        """Answer `path` with a redirect to `location`."""
        self.pages[path] = Page(status=status, headers={"Location": location})

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, request.headers.get("Host", "")))
        self.received.append((request.path, dict(request.headers)))
        page = self.pages.get(request.path)
        if page is None:
            return web.Response(status=404, text="not here")
        if any(request.headers.get(name) != value for name, value in page.require.items()):
            return web.Response(status=401, text="credentials required", headers={"WWW-Authenticate": "Bearer"})
        if not page.body and page.status != 200:
            return web.Response(status=page.status, headers=page.headers)
        response = web.Response(status=page.status, body=page.body, headers=page.headers)
        response.content_type = page.content_type.split(";")[0]
        if "charset=" in page.content_type:
            response.charset = page.content_type.split("charset=", 1)[1]
        return response
