"""An in-process publish/subscribe bus: the engine and the monitor publish, whoever listens subscribes.

Publishing never blocks and never fails because of a slow listener: each subscriber has a bounded
queue, and when it is full the oldest event is dropped and counted (on the subscription and on the
bus), so a stuck WebSocket client cannot stall the engine or grow memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from bot.db.base import utcnow

DEFAULT_QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened: `topic` groups streams ("task", "monitor"), `kind` says what.

    `origin` is None for events of this process, and names the daemon for events relayed from
    another one sharing the database (bot/engine/relay.py).
    """

    topic: str
    kind: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    task_id: int | None = None
    at: datetime = field(default_factory=utcnow)
    origin: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The event as JSON-ready data (what WebSocket clients receive)."""
        data = {
            "topic": self.topic,
            "kind": self.kind,
            "task_id": self.task_id,
            "at": self.at.isoformat(),
            "payload": dict(self.payload),
        }
        if self.origin is not None:
            data["origin"] = self.origin
        return data


EventFilter = Callable[[Event], bool]


class Subscription:
    """A bounded queue of events for one listener; iterate it, close it when done."""

    def __init__(self, *, bus: EventBus, accepts: EventFilter, maxsize: int) -> None:
        self._bus = bus
        self._accepts = accepts
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        self.closed = False

    def _offer(self, event: Event) -> None:
        if self.closed or not self._accepts(event):
            return
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()  # drop the oldest: fresh events matter more to a live view
                self.dropped += 1
                self._bus.dropped_total += 1

    async def get(self) -> Event:
        """The next event (wrap in asyncio.timeout() to bound the wait)."""
        return await self._queue.get()

    def pending(self) -> int:
        """How many events wait in this subscription's queue."""
        return self._queue.qsize()

    def drain(self) -> list[Event]:
        """Every event waiting now, without waiting for more."""
        events = []
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        return events

    def close(self) -> None:
        """Stop receiving events and leave the bus."""
        self.closed = True
        self._bus._discard(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while not self.closed:
            yield await self._queue.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventBus:
    """Fan-out of events to every subscription whose filter accepts them."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self.published_total = 0
        self.dropped_total = 0
        self.relayed_total = 0  # of those published, events relayed from another daemon

    def publish(self, event: Event) -> None:
        """Deliver `event` to every interested subscriber without waiting for any of them."""
        self.published_total += 1
        if event.origin is not None:
            self.relayed_total += 1
        for subscription in tuple(self._subscriptions):
            subscription._offer(event)

    def subscribe(
        self,
        *,
        topics: frozenset[str] | set[str] | None = None,
        task_id: int | None = None,
        maxsize: int = DEFAULT_QUEUE_SIZE,
    ) -> Subscription:
        """A new subscription to events of `topics` (all when None), optionally of one task only."""
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        wanted = frozenset(topics) if topics is not None else None

        def accepts(event: Event) -> bool:
            if wanted is not None and event.topic not in wanted:
                return False
            return task_id is None or event.task_id == task_id

        subscription = Subscription(bus=self, accepts=accepts, maxsize=maxsize)
        self._subscriptions.add(subscription)
        return subscription

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open (a gauge for /metrics)."""
        return len(self._subscriptions)

    def _discard(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
