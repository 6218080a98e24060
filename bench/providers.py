"""Per-call cost of our provider client against the cheapest raw client, on a local peer.

    python -m bench.providers [--json] [--calls N] [--tokens N]

The peer is a minimal OpenAI-compatible server in a subprocess on 127.0.0.1 (so its CPU does
not count against either client). Calls alternate between our `OpenAICompatProvider` and a raw
aiohttp request doing the least work that still reads the whole answer, and the overhead is the
difference of their latency percentiles. The raw httpx figure is printed for reference: it is
why the hot path uses aiohttp. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
from aiohttp import web

from bot.engine.providers.openai_compat import OpenAICompatProvider
from bot.engine.providers.port import ChatMessage, ChatRequest

MODEL = "bench-model"


# -- the peer ----------------------------------------------------------------------------------
def _peer_app(tokens: int) -> web.Application:
    answer = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    answer_bytes = json.dumps(answer).encode()
    frames = [
        b"data: "
        + json.dumps(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}],
            }
        ).encode()
        + b"\n\n"
        for i in range(tokens)
    ]
    tail = (
        b"data: "
        + json.dumps(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": MODEL,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
        ).encode()
        + b"\n\ndata: "
        + json.dumps({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": tokens}}).encode()
        + b"\n\ndata: [DONE]\n\n"
    )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=answer_bytes, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for frame in frames:
            await resp.write(frame)
        await resp.write(tail)
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


async def _serve(port_file: Path, tokens: int) -> None:
    runner = web.AppRunner(_peer_app(tokens), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr,attr-defined]
    await asyncio.to_thread(port_file.write_text, str(port))
    await asyncio.Event().wait()


# -- measurements ------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return (time.perf_counter() - started) * 1000.0


async def measure(base_url: str, *, calls: int, tokens: int) -> dict[str, Any]:
    """Run the benchmark against a running peer."""
    provider = OpenAICompatProvider(name="bench", base_url=base_url, is_local=True)
    request = ChatRequest(model=MODEL, messages=[ChatMessage(role="user", content="hi there")])
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}], "stream": False}
    stream_payload = dict(payload, stream=True, stream_options={"include_usage": True})
    url = base_url + "/v1/chat/completions"
    session = aiohttp.ClientSession()

    async def raw_chat() -> None:
        async with session.post(url, json=payload) as resp:
            json.loads(await resp.read())

    async def raw_stream() -> int:
        count = 0
        buffer = b""
        async with session.post(url, json=stream_payload) as resp:
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *frames, buffer = buffer.split(b"\n\n")
                for frame in frames:
                    data = frame[6:]
                    if data != b"[DONE]":
                        json.loads(data)
                        count += 1
        return count

    async def ours_chat() -> None:
        await provider.chat(request)

    async def ours_stream() -> int:
        count = 0
        async for delta in provider.stream_chat(request):
            if delta.text:
                count += 1
        return count

    import httpx

    hx = httpx.AsyncClient()

    async def httpx_chat() -> None:
        resp = await hx.post(url, json=payload)
        json.loads(resp.content)

    try:
        for _ in range(20):  # warm up connections and code paths
            await raw_chat()
            await ours_chat()
            await httpx_chat()
            await raw_stream()
            await ours_stream()
        raw_ms, ours_ms, hx_ms, raw_s_ms, ours_s_ms = [], [], [], [], []
        for _ in range(calls):
            raw_ms.append(await _timed(raw_chat))
            ours_ms.append(await _timed(ours_chat))
            hx_ms.append(await _timed(httpx_chat))
            raw_s_ms.append(await _timed(raw_stream))
            ours_s_ms.append(await _timed(ours_stream))
        started = time.perf_counter()
        streamed_raw = sum([await raw_stream() for _ in range(10)])
        raw_tps = streamed_raw / (time.perf_counter() - started)
        started = time.perf_counter()
        streamed_ours = sum([await ours_stream() for _ in range(10)])
        ours_tps = streamed_ours / (time.perf_counter() - started)
    finally:
        await session.close()
        await hx.aclose()
        await provider.aclose()
    return {
        "overhead_ms_p50": round(_pct(ours_ms, 0.5) - _pct(raw_ms, 0.5), 4),
        "overhead_ms_p99": round(_pct(ours_ms, 0.99) - _pct(raw_ms, 0.99), 4),
        "stream_overhead_ms_p50": round(_pct(ours_s_ms, 0.5) - _pct(raw_s_ms, 0.5), 4),
        "stream_overhead_ms_p99": round(_pct(ours_s_ms, 0.99) - _pct(raw_s_ms, 0.99), 4),
        "tokens_per_s_ours": round(ours_tps, 1),
        "tokens_per_s_raw": round(raw_tps, 1),
        "baseline": "raw aiohttp ClientSession.post on the same local peer",
        "raw_ms_p50": round(_pct(raw_ms, 0.5), 4),
        "ours_ms_p50": round(_pct(ours_ms, 0.5), 4),
        "httpx_raw_ms_p50": round(_pct(hx_ms, 0.5), 4),
        "httpx_overhead_vs_aiohttp_ms_p50": round(_pct(hx_ms, 0.5) - _pct(raw_ms, 0.5), 4),
        "stream_raw_ms_p50": round(_pct(raw_s_ms, 0.5), 4),
        "stream_ours_ms_p50": round(statistics.median(ours_s_ms), 4),
        "calls": calls,
        "stream_tokens": tokens,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: start the peer subprocess, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--peer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer is not None:
        asyncio.run(_serve(args.peer, args.tokens))
        return 0
    with TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        peer = subprocess.Popen(
            [sys.executable, "-m", "bench.providers", "--peer", str(port_file), "--tokens", str(args.tokens)]
        )
        try:
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text()):
                if peer.poll() is not None or time.monotonic() > deadline:
                    print("the benchmark peer did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            base_url = f"http://127.0.0.1:{port_file.read_text()}"
            result = asyncio.run(measure(base_url, calls=args.calls, tokens=args.tokens))
        finally:
            peer.terminate()
            peer.wait(timeout=10)
    for key, value in result.items():
        print(f"{key:36} {value}")
    goal_met = result["overhead_ms_p50"] <= 0.5 and result["overhead_ms_p99"] <= 2.0
    print(f"{'goal (p50 <= 0.5 ms, p99 <= 2 ms)':36} {'met' if goal_met else 'NOT met'}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
