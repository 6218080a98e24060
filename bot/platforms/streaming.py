"""Streams a model's answer into chat within each platform's limits, losing no token.

The model produces deltas far faster than chats accept edits. `StreamRenderer` shows the first
delta at once (a new message, or a native stream started with whatever has arrived — a small
first buffer, so the first token is visible in well under a second), then coalesces: one edit of
a message at most every `min_edit_interval_s` (Slack's chat.update is Tier 3, ≈ 50/min per
workspace, so Slack also shares an `EditBudget`), always sending the whole text so far, so an
edit that is skipped or delayed loses nothing. A 429 is honoured by waiting `retry_after` and
sending the latest text again.

Output longer than one message continues in the next message, split at a paragraph, line or
word boundary; past `max_messages` the last message says so and the full text is attached as a
file when the stream finishes. The concatenation of the messages (or the file) is exactly the text
the model produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bot.logs import get_logger
from bot.platforms.errors import DeliveryError, PlatformError, RateLimitedError
from bot.platforms.events import Conversation, MessageHandle, NativeStream
from bot.platforms.i18n import translate

log = get_logger("bot.platforms.streaming")
T = TypeVar("T")

MAX_RATE_LIMIT_RETRIES = 8


def split_point(text: str, limit: int) -> int:
    """Where to cut `text` so the first part fits in `limit` chars, preferring clean boundaries."""
    if len(text) <= limit:
        return len(text)
    window = text[:limit]
    floor = limit // 2
    for separator in ("\n\n", "\n", " "):
        index = window.rfind(separator)
        if index >= floor:
            return index + len(separator)
    return limit


class EditBudget:
    """A sliding-window cap on edits shared by every stream on one platform (Slack's Tier 3)."""

    def __init__(self, *, per_minute: int, window_s: float = 60.0) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.window_s = window_s
        self._stamps: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one more edit fits in the window, then count it."""
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._stamps and now - self._stamps[0] >= self.window_s:
                    self._stamps.popleft()
                if len(self._stamps) < self.per_minute:
                    self._stamps.append(now)
                    return
                await asyncio.sleep(self.window_s - (now - self._stamps[0]))


@dataclass
class RenderResult:
    """What a finished stream did: the messages it used, how often it edited, whether it attached."""

    message_ids: list[str] = field(default_factory=list)
    edits: int = 0
    posts: int = 0
    native_appends: int = 0
    uploaded: bool = False
    rate_limited: int = 0
    first_update_s: float | None = None
    native: bool = False


class StreamRenderer:
    """Coalesces streamed deltas into as few message updates as the platform allows.

    Use `feed()` for each delta (it never blocks on the network) and `finish()` once; `finish`
    returns after the final text is visible.
    """

    def __init__(
        self,
        conversation: Conversation,
        *,
        budget: EditBudget | None = None,
        language: str = "en",
        overflow_note: str | None = None,
        filename: str = "answer.md",
        use_native: bool = True,
    ) -> None:
        self._conversation = conversation
        self._limits = conversation.limits
        self._budget = budget
        self._overflow_note = overflow_note if overflow_note is not None else translate("stream.overflow", language)
        self._filename = filename
        self._use_native = use_native
        self._text = ""
        self._wake = asyncio.Event()
        self._closing = False
        self._started_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.result = RenderResult()
        # edit path
        self._current: MessageHandle | None = None
        self._current_start = 0
        self._shown = ""
        self._last_update = 0.0
        self._overflowed = False
        # native path
        self._native: NativeStream | None = None
        self._native_sent = 0
        self._native_tried = False

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return self._text

    def feed(self, delta: str) -> None:
        """Add a delta; the background flusher shows it as soon as the limits allow."""
        if self._closing:
            raise RuntimeError("stream already finished")
        if not delta:
            return
        self._text += delta
        if self._task is None:
            self._started_at = time.monotonic()
            self._task = asyncio.create_task(self._flush_loop(), name="stream-renderer")
        self._wake.set()

    async def finish(self, suffix: str = "") -> RenderResult:
        """Add `suffix`, show the complete text, attach the file if it overflowed; call once."""
        if suffix:
            self._text += suffix
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except PlatformError as err:  # expected: an intermediate update failed; the final one carries all
                log.warning("stream update failed; sending the final text", error=str(err))
        if not self._text:
            self._text = "…"
        await self._flush(final=True)
        return self.result

    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            interval = (
                self._limits.native_append_interval_s if self._native is not None else self._limits.min_edit_interval_s
            )
            wait = self._last_update + interval - time.monotonic()
            if self._has_shown_something() and wait > 0:
                # Coalesce: deltas keep arriving while we wait; `finish` cuts the wait short.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed_event(), timeout=wait)
                if self._closing:
                    return
            await self._flush(final=False)

    async def _closed_event(self) -> None:
        while not self._closing:
            self._wake.clear()
            await self._wake.wait()

    def _has_shown_something(self) -> bool:
        return self._current is not None or self._native is not None

    async def _flush(self, *, final: bool) -> None:
        if self.result.first_update_s is None and not self._native_tried and self._use_native:
            self._native_tried = True
            opening = self._text  # deltas fed while the stream opens are appended after, not lost
            self._native = await self._retrying(lambda: self._conversation.start_native_stream(opening))
            if self._native is not None:
                self._native_sent = len(opening)
                self.result.native = True
                self.result.message_ids.append(self._native.message_id)
                self._mark_update()
                if not final:
                    return
        if self._native is not None:
            await self._flush_native(final=final)
        else:
            await self._flush_edits(final=final)

    async def _flush_native(self, *, final: bool) -> None:
        assert self._native is not None
        native = self._native
        limits = self._limits
        overflow = len(self._text) > limits.native_max_chars
        pending = self._text[: limits.native_max_chars][self._native_sent :]
        # On the final flush the last piece travels with chat.stopStream, so keep room for it.
        keep = limits.native_chunk_chars - len(self._overflow_note) if final else 0
        while len(pending) > keep:
            chunk = pending[: limits.native_chunk_chars] if not final else pending[: max(1, len(pending) - keep)]
            chunk = chunk[: limits.native_chunk_chars]
            await self._retrying(functools.partial(native.append, chunk))
            self.result.native_appends += 1
            self._native_sent += len(chunk)
            pending = pending[len(chunk) :]
            self._mark_update()
            if not final and not pending:
                break
        if final:
            tail = pending + (self._overflow_note if overflow else "")
            await self._retrying(lambda: native.stop(tail))
            self._native_sent += len(pending)
            if overflow:
                await self._upload_full_text()

    async def _flush_edits(self, *, final: bool) -> None:
        limits = self._limits
        pending = self._text[self._current_start :]
        while len(pending) > limits.max_chars:
            index = len(self.result.message_ids) - (1 if self._current is not None else 0)
            if index + 1 >= limits.max_messages:
                break
            cut = split_point(pending, limits.max_chars)
            await self._show(pending[:cut])
            self._current = None
            self._shown = ""
            self._current_start += cut
            pending = pending[cut:]
        if len(pending) > limits.max_chars:
            self._overflowed = True
            room = limits.max_chars - len(self._overflow_note)
            display = pending[: split_point(pending, room)] + self._overflow_note
        else:
            display = pending
        await self._show(display)
        if final and self._overflowed:
            await self._upload_full_text()

    async def _show(self, display: str) -> None:
        if self._current is None:
            conversation = self._conversation
            handle = await self._retrying(lambda: conversation.say(display))
            self._current = handle
            self._shown = display
            self.result.posts += 1
            self.result.message_ids.append(handle.message_id)
            self._mark_update()
            return
        if display == self._shown:
            return
        wait = self._last_update + self._limits.min_edit_interval_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self._budget is not None:
            await self._budget.acquire()
        current = self._current
        await self._retrying(lambda: current.edit(display))
        self._shown = display
        self.result.edits += 1
        self._mark_update()

    async def _upload_full_text(self) -> None:
        conversation = self._conversation
        content = self._text.encode("utf-8")
        await self._retrying(lambda: conversation.upload(filename=self._filename, content=content))
        self.result.uploaded = True

    def _mark_update(self) -> None:
        now = time.monotonic()
        self._last_update = now
        if self.result.first_update_s is None:
            self.result.first_update_s = now - self._started_at

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        for _attempt in range(MAX_RATE_LIMIT_RETRIES):
            try:
                return await call()
            except RateLimitedError as err:
                # Expected: the platform told us how long to wait; the next send carries all text.
                self.result.rate_limited += 1
                log.info("chat rate limited", retry_after=err.retry_after)
                await asyncio.sleep(err.retry_after)
        raise DeliveryError(f"still rate limited after {MAX_RATE_LIMIT_RETRIES} attempts")
