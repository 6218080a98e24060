"""Relays engine and monitor alerts to each platform's alert channel, and says when they resolve.

It subscribes to the event bus (kinds `alert` and `alert_cleared`; the monitor publishes them on
topic "monitor", payload `AlertNotice.as_json()`: rule, severity, messages per language,
alert_id). A fired alert becomes a card with its severity in the channel; when the condition
clears, the resolution is posted in that card's thread (or in the channel if the card is
unknown, e.g. after a restart). Each channel gets its workspace language.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.events import Event, EventBus, Subscription
from bot.logs import get_logger
from bot.platforms.base import Platform
from bot.platforms.errors import PlatformError
from bot.platforms.events import Card, MessageHandle, Place
from bot.platforms.i18n import translate

log = get_logger("bot.platforms.alerts")

ALERT_KINDS = frozenset({"alert", "alert_cleared"})
DEFAULT_TOPICS = frozenset({"monitor", "engine"})


@dataclass(frozen=True, slots=True)
class AlertTarget:
    """One platform's alert channel and the language it is written in."""

    platform: Platform
    place: Place
    language: str = "en"


def _message(payload: Mapping[str, Any], language: str) -> str:
    messages = payload.get("messages")
    if isinstance(messages, Mapping) and messages:
        return str(messages.get(language) or messages.get("en") or next(iter(messages.values())))
    return str(payload.get("message") or payload.get("rule") or "?")


def _key(payload: Mapping[str, Any]) -> str:
    return str(payload.get("rule") or payload.get("dedupe_key") or payload.get("alert_id") or "?")


class AlertRelay:
    """Bus → alert channels; start() subscribes, stop() unsubscribes and waits for the loop."""

    name = "alert-relay"

    def __init__(
        self, *, bus: EventBus, targets: Sequence[AlertTarget], topics: frozenset[str] = DEFAULT_TOPICS
    ) -> None:
        self._bus = bus
        self._targets = list(targets)
        self._topics = topics
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._open: dict[tuple[int, str], MessageHandle] = {}
        self.delivered = 0

    async def start(self) -> None:
        """Subscribe and relay in the background."""
        self._subscription = self._bus.subscribe(topics=set(self._topics))
        self._task = asyncio.create_task(self._run(), name="alert-relay")

    async def stop(self) -> None:
        """Stop relaying."""
        if self._subscription is not None:
            self._subscription.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        assert self._subscription is not None
        async for event in self._subscription:
            if event.kind not in ALERT_KINDS:
                continue
            try:
                await self.relay(event)
            except Exception:  # the relay's boundary: one bad alert must not stop the others
                log.exception("alert relay failed", kind=event.kind)

    async def relay(self, event: Event) -> None:
        """Post one alert (or its resolution) to every target."""
        payload = event.payload
        key = _key(payload)
        for index, target in enumerate(self._targets):
            language = target.language
            text = _message(payload, language)
            try:
                conversation = target.platform.conversation(target.place)
                if event.kind == "alert":
                    severity = str(payload.get("severity") or "warning")
                    label = translate(f"alert.severity.{severity}", language)
                    title = translate("alert.raised", language, severity=label, message=text)
                    card = Card(
                        title=title[:150],
                        body=text,
                        severity=severity,
                        footer=str(payload.get("reading") or "") or None,
                    )
                    self._open[(index, key)] = await conversation.say(title, card=card)
                else:
                    resolved = translate("alert.resolved", language, message=text)
                    anchor = self._open.pop((index, key), None)
                    if anchor is not None:
                        thread = await conversation.open_thread(title=resolved[:80], anchor=anchor)
                        await thread.say(resolved)
                    else:
                        await conversation.say(resolved)
                self.delivered += 1
            except PlatformError as err:  # expected: a platform is down or refuses; others still get it
                log.warning("alert not delivered", platform=target.platform.name, error=str(err))
