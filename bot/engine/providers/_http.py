"""The HTTP layer every provider shares: one aiohttp session, deadlines, and error mapping.

aiohttp is the hot path's client because it measured cheapest per call here (≈0.2 ms of CPU
against ≈1 ms for httpx and ≈1.8 ms for the openai SDK; `python -m bench.providers` re-measures).
Nothing here retries: the router is the only retry loop.

Deadlines: `connect_s` bounds opening the TCP connection; `total_s` bounds a whole call;
`first_token_s` bounds the wait for the first streamed event (enforced by the stream readers,
since only they know what "first token" means for their protocol).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bot.engine.providers.port import (
    ModelDoesNotFitError,
    ModelNotFoundError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderRateLimitedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    StreamInterruptedError,
)

_OOM_MARKERS = (
    "insufficient",
    "out of memory",
    "not enough memory",
    "requires more system memory",
    "exceeds available",
    "failed to allocate",
    "cudamalloc",
)


@dataclass(frozen=True, slots=True)
class HttpTimeouts:
    """Deadlines in seconds for one provider's calls (per-request values in ChatRequest win)."""

    connect_s: float = 5.0
    first_token_s: float = 120.0
    total_s: float = 600.0
    probe_s: float = 5.0


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now or datetime.now(UTC)
        return max(0.0, (when - current).total_seconds())
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return seconds


def error_message_from_body(body: str) -> str:
    """The human message inside an error body: `{"error": "..."}`, `{"error": {"message": ...}}`."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed.get("detail", parsed.get("message")))
        if isinstance(error, str):
            return error
        if isinstance(error, dict):
            message = error.get("message")
            if isinstance(message, str):
                return message
    return body.strip()[:300]


def looks_like_out_of_memory(message: str) -> bool:
    """Whether a server's error text says the model does not fit in memory."""
    lowered = message.lower()
    return any(marker in lowered for marker in _OOM_MARKERS)


def http_error(*, provider: str, status: int, body: str, headers: Mapping[str, str], what: str) -> ProviderError:
    """Map a non-2xx answer to the ProviderError tree."""
    message = error_message_from_body(body)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if retry_after is None and headers.get("retry-after-ms"):
        try:
            retry_after = float(headers["retry-after-ms"]) / 1000.0
        except ValueError:
            retry_after = None
    text = f"{provider}: {what} failed with HTTP {status}: {message}"
    if status == 429:
        return ProviderRateLimitedError(text, status=status, body=body, retry_after=retry_after)
    if status in (401, 403):
        error = ProviderHTTPError(text, status=status, body=body, retry_after=retry_after)
        error.hint = "check the provider's API token (it is sent as 'Authorization: Bearer …')"
        return error
    if looks_like_out_of_memory(message):
        return ModelDoesNotFitError(text)
    if status == 404 and "model" in message.lower():
        return ModelNotFoundError(text)
    return ProviderHTTPError(text, status=status, body=body, retry_after=retry_after)


def is_local_url(base_url: str) -> bool:
    """Whether a base URL points at this machine or a private network (a self-hosted server)."""
    host = urlsplit(base_url).hostname or ""
    if host in ("localhost", "host.docker.internal") or host.endswith((".local", ".lan", ".internal")):
        return True
    try:
        address = ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


class HttpClient:
    """One provider's aiohttp session, created lazily inside the running event loop."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        api_token: str | None = None,
        timeouts: HttpTimeouts | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or HttpTimeouts()
        headers = {"Accept": "application/json", **(extra_headers or {})}
        if api_token:
            headers["Authorization"] = f"Bearer {api_token}"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def url(self, path: str) -> str:
        """Absolute URL for a path under the base URL."""
        return self.base_url + path

    def session(self) -> aiohttp.ClientSession:
        """The shared session (a new one when the loop changed, e.g. between test loops)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s),
                json_serialize=json.dumps,
                raise_for_status=False,
            )
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        """Close the session and its pooled connections."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _timeout(self, total_s: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total_s, sock_connect=self.timeouts.connect_s)

    def _connection_error(self, err: BaseException, what: str) -> ProviderError:
        if isinstance(err, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return ProviderTimeoutError(f"{self.provider}: {what} timed out")
        if isinstance(err, aiohttp.InvalidURL):
            return ProviderError(f"{self.provider}: invalid URL {err}", hint="check the provider's base URL")
        return ProviderUnavailableError(
            f"{self.provider}: cannot reach {self.base_url} ({type(err).__name__}: {err})",
            hint="is the server running and the base URL right?",
        )

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        payload: Any = None,
        timeout_s: float | None = None,
        what: str | None = None,
    ) -> Any:
        """One request answered by JSON; non-2xx and bad JSON become ProviderErrors."""
        label = what or f"{method} {path}"
        total = timeout_s if timeout_s is not None else self.timeouts.total_s
        try:
            async with self.session().request(
                method, self.url(path), json=payload, timeout=self._timeout(total)
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise http_error(
                        provider=self.provider,
                        status=resp.status,
                        body=raw.decode("utf-8", "replace"),
                        headers=resp.headers,
                        what=label,
                    )
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise self._connection_error(err, label) from err
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as err:
            raise ProviderProtocolError(f"{self.provider}: {label} answered with invalid JSON") from err

    async def probe(self, path: str) -> tuple[int, float, Any]:
        """GET with the short probe deadline: (status, latency ms, parsed JSON or None)."""
        started = time.perf_counter()
        async with self.session().get(self.url(path), timeout=self._timeout(self.timeouts.probe_s)) as resp:
            raw = await resp.read()
        latency = (time.perf_counter() - started) * 1000.0
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        return resp.status, latency, body

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        payload: Any,
        connect_deadline_s: float | None,
        what: str,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a streaming response; the status is checked before the body is handed over.

        `connect_deadline_s` bounds the wait for the response headers (servers that hold the
        headers until the first token, like llama.cpp, count that wait as first-token time).
        """
        session = self.session()
        try:
            async with asyncio.timeout(connect_deadline_s):
                resp = await session.request(method, self.url(path), json=payload, timeout=self._timeout(None))
        except TimeoutError as err:
            raise ProviderTimeoutError(f"{self.provider}: {what}: no answer within {connect_deadline_s:.1f}s") from err
        except (aiohttp.ClientError, OSError) as err:
            raise self._connection_error(err, what) from err
        try:
            if resp.status >= 400:
                try:
                    body = (await resp.read()).decode("utf-8", "replace")
                except (aiohttp.ClientError, OSError):
                    body = ""
                raise http_error(provider=self.provider, status=resp.status, body=body, headers=resp.headers, what=what)
            yield resp
        finally:
            resp.release()


def stream_broken(provider: str, err: BaseException, partial: str) -> StreamInterruptedError:
    """A stream that broke after it started, keeping the text received so far."""
    return StreamInterruptedError(
        f"{provider}: the stream broke after {len(partial)} characters ({type(err).__name__}: {err})",
        partial_text=partial,
    )


def deadline_error(provider: str, *, first: bool, seconds: float, partial: str) -> ProviderError:
    """The error for a passed stream deadline (first-token, or total after text arrived)."""
    if first:
        return ProviderTimeoutError(f"{provider}: no first token within {seconds:.1f}s")
    if not partial:
        return ProviderTimeoutError(f"{provider}: the answer did not finish within {seconds:.1f}s")
    # Text already arrived: keep it, so a fallback model can continue instead of restarting.
    return StreamInterruptedError(f"{provider}: the answer did not finish within {seconds:.1f}s", partial_text=partial)
