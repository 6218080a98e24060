"""The port every chat platform implements, and the reconnect loop they all share.

A platform turns its wire events into `bot.platforms.events` and hands them to one `EventSink`
(the command dispatcher); it answers through `Conversation`s it creates. `start()` returns once
the first connection is up (or raises a `PlatformError` when it can never work, e.g. a rejected
token); after that, `_serve()` losing its connection is retried here with capped exponential
backoff and jitter, written once for every platform. `stop()` cancels and closes.

Each event is handled in its own task, so a slow command never delays the acknowledgement the
platform waits for (Slack and Discord both want one within 3 seconds).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.logs import get_logger
from bot.platforms.errors import PlatformConfigError
from bot.platforms.events import Card, Conversation, IncomingEvent, Place, Sender

log = get_logger("bot.platforms")

EventSink = Callable[[IncomingEvent, Conversation], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: initial × factor^n, capped, with ±jitter so many bots do not stampede."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt `attempt` (0-based)."""
        base = min(self.max_s, self.initial_s * self.factor**attempt)
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter)))


class Platform(abc.ABC):
    """One chat platform connection: events in, conversations out."""

    name: str

    def __init__(self, *, sink: EventSink, backoff: Backoff | None = None) -> None:
        self._sink = sink
        self._backoff = backoff or Backoff()
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._handlers: set[asyncio.Task[object]] = set()
        self.reconnects = 0

    # -- lifecycle (the daemon's Component protocol) ----------------------------------------------
    async def start(self) -> None:
        """Connect and return once ready; a configuration or credential problem raises at once."""
        first = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(first), name=f"platform-{self.name}")
        await first

    async def stop(self) -> None:
        """Disconnect, then wait for in-flight handlers briefly; safe after a partial start."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        await self._disconnect()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)

    async def _run(self, first: asyncio.Future[None]) -> None:
        attempt = 0
        while True:
            try:
                await self._connect()
            except PlatformConfigError as err:  # expected and permanent: retrying cannot help
                if not first.done():
                    first.set_exception(err)
                    return
                log.error("platform cannot reconnect", platform=self.name, error=str(err))
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the reconnect boundary: any connect failure is retried
                if not first.done():
                    first.set_exception(err)
                    return
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning("platform connect failed", platform=self.name, error=str(err), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            if not first.done():
                first.set_result(None)
            self._ready.set()
            attempt = 0
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # connection lost: log, back off, reconnect
                log.warning("platform connection lost", platform=self.name, error=str(err))
            self._ready.clear()
            self.reconnects += 1
            with contextlib.suppress(Exception):
                await self._disconnect()
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1

    # -- what each platform implements ------------------------------------------------------------
    @abc.abstractmethod
    async def _connect(self) -> None:
        """Open the connection (raise PlatformConfigError when credentials are rejected)."""

    async def _serve(self) -> None:
        """Run until the connection drops; the default waits forever (SDKs that reconnect themselves)."""
        await asyncio.Event().wait()

    @abc.abstractmethod
    async def _disconnect(self) -> None:
        """Close the connection; must be safe to call twice."""

    @abc.abstractmethod
    def conversation(self, place: Place, sender: Sender | None = None) -> Conversation:
        """A conversation to post into without an incoming event (alerts; a task's thread after a
        restart, on behalf of the `sender` who asked)."""

    # -- shared helpers ---------------------------------------------------------------------------
    def dispatch(self, event: IncomingEvent, conversation: Conversation) -> asyncio.Task[object]:
        """Hand an event to the sink in the background (so the platform's ack is never delayed)."""
        task: asyncio.Task[object] = asyncio.create_task(self._deliver(event, conversation))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        return task

    async def _deliver(self, event: IncomingEvent, conversation: Conversation) -> object:
        return await self._sink(event, conversation)

    async def wait_idle(self, limit_s: float = 10.0) -> None:
        """Wait until every dispatched event has been handled (tests and graceful stop)."""
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=limit_s)

    async def post_card(self, place: Place, card: Card) -> str:
        """Post a card to a channel; returns the message id (alerts use it to thread the resolve)."""
        handle = await self.conversation(place).say(card.as_text(), card=card)
        return handle.message_id
