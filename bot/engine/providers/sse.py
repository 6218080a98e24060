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

__all__ = ["ServerSentEvent", "iter_sse"]


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """Events from a byte stream, whatever the chunk boundaries.

    An event still pending when the stream ends cleanly is dispatched (some servers omit the
    blank line after `data: [DONE]`); a broken connection surfaces as the transport's error.
    """
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = SSELineDecoder()
    events = SSEDecoder()
    async for chunk in chunks:
        text = text_decoder.decode(chunk)
        if not text:
            continue
        for line in lines.decode(text):
            event = events.decode(line)
            if event is not None:
                yield event
    tail = text_decoder.decode(b"", final=True)
    pending = (lines.decode(tail) if tail else []) + lines.flush() + [""]
    for line in pending:
        event = events.decode(line)
        if event is not None:
            yield event
