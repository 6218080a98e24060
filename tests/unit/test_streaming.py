"""StreamRenderer against an in-memory surface that enforces a platform's rules like a server would."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from bot.platforms.errors import RateLimitedError
from bot.platforms.events import Card, Conversation, MessageHandle, NativeStream, Place, StreamLimits
from bot.platforms.streaming import EditBudget, StreamRenderer, split_point


class Surface(Conversation):
    """A chat surface that records every post/edit with its time and can answer 429 like a server."""

    def __init__(self, limits: StreamLimits, *, native: bool = False) -> None:
        self.place = Place("test", "C1", "T1")
        self.limits = limits
        self.native = native
        self.messages: dict[str, list[tuple[float, str]]] = {}
        self.files: list[tuple[str, bytes]] = []
        self.rate_limit_next = 0
        self.start_delay_s = 0.0
        self.retry_after = 0.2
        self.calls = 0

    def _maybe_limit(self) -> None:
        self.calls += 1
        if self.rate_limit_next:
            self.rate_limit_next -= 1
            raise RateLimitedError("slow down", retry_after=self.retry_after)

    async def say(self, text: str, *, card: Card | None = None) -> MessageHandle:
        self._maybe_limit()
        assert len(text) <= self.limits.max_chars
        message_id = str(len(self.messages) + 1)
        self.messages[message_id] = [(time.monotonic(), text)]
        surface = self

        class Handle(MessageHandle):
            def __init__(self) -> None:
                self.message_id = message_id

            async def edit(self, new_text: str, *, card: Card | None = None) -> None:
                surface._maybe_limit()
                assert len(new_text) <= surface.limits.max_chars
                surface.messages[message_id].append((time.monotonic(), new_text))

        return Handle()

    async def upload(self, *, filename: str, content: bytes, comment: str = "") -> None:
        self.files.append((filename, content))

    async def open_thread(self, *, title: str, anchor: MessageHandle) -> Conversation:
        return self

    def at(self, place: Place) -> Conversation:
        return self

    def message(self, message_id: str) -> MessageHandle:
        raise AssertionError("the renderer never looks up old messages")

    async def start_native_stream(self, text: str) -> NativeStream | None:
        if not self.native:
            return None
        await asyncio.sleep(self.start_delay_s)
        surface = self
        self.messages["native"] = [(time.monotonic(), text)]

        class Stream(NativeStream):
            message_id = "native"

            async def append(self, delta: str) -> None:
                surface._maybe_limit()
                assert len(delta) <= surface.limits.native_chunk_chars
                surface.messages["native"].append((time.monotonic(), surface.final("native") + delta))

            async def stop(self, delta: str = "") -> None:
                surface.messages["native"].append((time.monotonic(), surface.final("native") + delta))

        return Stream()

    def final(self, message_id: str) -> str:
        return self.messages[message_id][-1][1]

    def joined(self) -> str:
        return "".join(self.final(key) for key in self.messages)


async def feed_over(renderer: StreamRenderer, tokens: list[str], *, seconds: float) -> None:
    pause = seconds / len(tokens)
    for token in tokens:
        renderer.feed(token)
        await asyncio.sleep(pause)  # the model's pace, not a wait for a condition


async def until(condition: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


def test_split_point_prefers_clean_boundaries() -> None:
    text = "para one\n\npara two is longer\nline three words"
    cut = split_point(text, 25)
    assert text[:cut] == "para one\n\npara two is "  # no newline in reach past the floor: a space
    assert split_point("a" * 50, 20) == 20
    assert split_point("short", 20) == 5
    assert split_point("x" * 15 + "\n" + "y" * 30, 20) == 16


async def test_first_update_is_immediate_and_edits_are_coalesced() -> None:
    surface = Surface(StreamLimits(max_chars=10_000, min_edit_interval_s=0.25))
    renderer = StreamRenderer(surface)
    tokens = [f"tok{i} " for i in range(120)]
    started = time.monotonic()
    renderer.feed(tokens[0])
    await until(lambda: bool(surface.messages))
    assert time.monotonic() - started < 0.05
    await feed_over(renderer, tokens[1:], seconds=1.2)
    result = await renderer.finish()
    (versions,) = surface.messages.values()
    stamps = [stamp for stamp, _ in versions]
    assert all(b - a >= 0.24 for a, b in itertools.pairwise(stamps))
    assert 3 <= result.edits <= 7  # ≈ 1.2 s / 0.25 s, never one per token
    assert surface.final("1") == "".join(tokens)
    assert result.first_update_s is not None and result.first_update_s < 0.05


async def test_rate_limit_is_waited_out_and_nothing_is_lost() -> None:
    surface = Surface(StreamLimits(max_chars=10_000, min_edit_interval_s=0.05))
    renderer = StreamRenderer(surface)
    renderer.feed("start ")
    await until(lambda: bool(surface.messages))
    surface.rate_limit_next = 3
    surface.retry_after = 0.1
    await feed_over(renderer, [f"w{i} " for i in range(60)], seconds=0.3)
    result = await renderer.finish(" end")
    assert result.rate_limited == 3
    assert surface.final("1") == "start " + "".join(f"w{i} " for i in range(60)) + " end"


async def test_rate_limited_forever_gives_up_with_delivery_error() -> None:
    from bot.platforms.errors import DeliveryError

    surface = Surface(StreamLimits(max_chars=100))
    surface.rate_limit_next = 100
    surface.retry_after = 0.0
    renderer = StreamRenderer(surface)
    renderer.feed("x")
    with pytest.raises(DeliveryError):
        await renderer.finish()


async def test_long_output_splits_then_attaches_a_file() -> None:
    surface = Surface(StreamLimits(max_chars=100, min_edit_interval_s=0.01, max_messages=3))
    renderer = StreamRenderer(surface, overflow_note=" [more in file]")
    words = [f"word{i:03d} " for i in range(50)]  # 400 chars: 3 messages of 100 are not enough
    await feed_over(renderer, words, seconds=0.2)
    result = await renderer.finish()
    assert result.uploaded and len(surface.messages) == 3
    assert all(len(surface.final(key)) <= 100 for key in surface.messages)
    assert surface.final("3").endswith(" [more in file]")
    assert surface.files == [("answer.md", "".join(words).encode())]
    prefix = surface.final("1") + surface.final("2")
    assert "".join(words).startswith(prefix)


async def test_long_output_within_limits_splits_exactly() -> None:
    surface = Surface(StreamLimits(max_chars=100, min_edit_interval_s=0.01, max_messages=10))
    renderer = StreamRenderer(surface)
    text = "".join(f"line {i}\n" for i in range(60))
    await feed_over(renderer, [text[i : i + 7] for i in range(0, len(text), 7)], seconds=0.2)
    await renderer.finish()
    assert surface.joined() == text and not surface.files
    assert all(surface.final(key).endswith("\n") for key in list(surface.messages)[:-1])


async def test_native_stream_appends_deltas_in_order() -> None:
    surface = Surface(StreamLimits(max_chars=100, native_append_interval_s=0.05, native_chunk_chars=50), native=True)
    renderer = StreamRenderer(surface)
    tokens = [f"n{i} " for i in range(80)]
    await feed_over(renderer, tokens, seconds=0.4)
    result = await renderer.finish()
    assert result.native and surface.final("native") == "".join(tokens)
    assert list(surface.messages) == ["native"]


async def test_empty_stream_still_shows_something() -> None:
    surface = Surface(StreamLimits(max_chars=100))
    result = await StreamRenderer(surface).finish()
    assert result.posts == 1 and surface.final("1") == "…"


async def test_edit_budget_caps_a_window() -> None:
    budget = EditBudget(per_minute=3, window_s=0.3)
    started = time.monotonic()
    for _ in range(4):
        await budget.acquire()
    assert time.monotonic() - started >= 0.29


async def test_overflow_note_in_the_readers_language() -> None:
    surface = Surface(StreamLimits(max_chars=60, min_edit_interval_s=0.01, max_messages=1))
    renderer = StreamRenderer(surface, language="pt-BR")
    renderer.feed("palavra " * 20)
    result = await renderer.finish()
    assert result.uploaded and surface.final("1").endswith("(continua no arquivo anexo)")


async def test_deltas_fed_while_the_native_stream_opens_are_not_lost() -> None:
    surface = Surface(StreamLimits(max_chars=4000, native_append_interval_s=0.05), native=True)
    surface.start_delay_s = 0.2  # the platform takes a while to open the stream
    renderer = StreamRenderer(surface)
    renderer.feed("first ")
    await asyncio.sleep(0.05)
    for word in ("second ", "third ", "fourth"):
        renderer.feed(word)  # arrives while chat.startStream is in flight
    await renderer.finish()
    assert surface.final("native") == "first second third fourth"
