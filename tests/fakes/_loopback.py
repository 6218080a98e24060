"""The lifecycle every HTTP fake shares: an aiohttp app on 127.0.0.1, port 0, start/close."""

from __future__ import annotations

import abc
from typing import Self

from aiohttp import web


class LoopbackServer(abc.ABC):
    """An aiohttp app on 127.0.0.1 with a free port; start/close or `async with`."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    @abc.abstractmethod
    def build_app(self) -> web.Application:
        """Subclasses return their routes."""

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>; only meaningful once started."""
        if self._runner is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        """Bind and serve."""
        runner = web.AppRunner(self.build_app(), shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._runner = runner
        return self

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
