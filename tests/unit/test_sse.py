"""SSE parsing over arbitrary chunk boundaries (the decoders are httpx-sse's; the glue is ours)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.engine.providers._http import parse_retry_after
from bot.engine.providers.sse import iter_sse


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _events(*parts: bytes) -> list[tuple[str, str]]:
    return [(event.event, event.data) async for event in iter_sse(_chunks(*parts))]


async def test_lines_split_across_chunks_and_inside_utf8_characters() -> None:
    raw = 'data: {"t": "olá"}\n\ndata: [DONE]\n\n'.encode()
    pieces = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    assert await _events(*pieces) == [("message", '{"t": "olá"}'), ("message", "[DONE]")]


async def test_every_single_byte_chunking_gives_the_same_events() -> None:
    raw = b"event: error\ndata: a\ndata: b\n\n: keep-alive\n\ndata: c\r\n\r\n"
    whole = await _events(raw)
    bytewise = await _events(*[raw[i : i + 1] for i in range(len(raw))])
    assert whole == bytewise == [("error", "a\nb"), ("message", "c")]


async def test_keep_alive_comments_yield_nothing() -> None:
    assert await _events(b": keep-alive\n\n: ping\n\n") == []


async def test_crlf_split_between_chunks() -> None:
    assert await _events(b"data: x\r", b"\n\r", b"\n") == [("message", "x")]


async def test_pending_event_without_blank_line_is_dispatched_at_clean_end() -> None:
    assert await _events(b"data: [DONE]") == [("message", "[DONE]")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("5", 5.0), ("0.5", 0.5), (" 12 ", 12.0), ("", None), (None, None), ("soon", None), ("-3", None)],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_http_date() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now=now) == 0.0
