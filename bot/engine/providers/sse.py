"""Server-sent events over an aiohttp body, parsed by httpx-sse's WHATWG-conformant decoders.

Why httpx-sse: it is the maintained SSE parser on PyPI (aiohttp-sse-client2's last release is
from 2023, sseclient-py only parses blocking iterators), and its two decoders are plain
text-in/events-out state machines with no HTTP client inside, so they run over aiohttp's body
(the hot path's client) as well as over httpx's. They handle lines split across network reads,
CR/LF/CRLF endings, comments (keep-alives), multi-line `data:` and `id`/`retry` fields.
The decoders live in `httpx_sse._decoders`; the version is pinned below 0.5 for that reason.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterable, AsyncIterator

from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

__all__ = ["SSEParser", "ServerSentEvent", "iter_sse"]


class SSEParser:
    """Incremental parser: feed bytes as they arrive, get the events they complete.

    Synchronous on purpose, so a reader can parse every event of one network read without an
    await (and a deadline check) per event.
    """

    __slots__ = ("_events", "_lines", "_text")

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lines = SSELineDecoder()
        self._events = SSEDecoder()

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Events completed by this chunk (possibly none)."""
        text = self._text.decode(chunk)
        if not text:
            return []
        found: list[ServerSentEvent] = []
        for line in self._lines.decode(text):
            event = self._events.decode(line)
            if event is not None:
                found.append(event)
        return found

    def close(self) -> list[ServerSentEvent]:
        """At a clean end of stream: the event still pending, if any.

        Dispatched although the spec drops it, because some servers omit the blank line after
        `data: [DONE]`; a broken connection never gets here (it raises in the transport).
        """
        tail = self._text.decode(b"", final=True)
        pending = (self._lines.decode(tail) if tail else []) + self._lines.flush() + [""]
        found: list[ServerSentEvent] = []
        for line in pending:
            event = self._events.decode(line)
            if event is not None:
                found.append(event)
        return found


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """Events from a byte stream, whatever the chunk boundaries."""
    parser = SSEParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event
