"""A local Slack: the Web API subset we call and the Socket Mode WebSocket, on 127.0.0.1:0.

Point slack_sdk at it with `AsyncWebClient(base_url=fake.api_url)` (settings
`slack.api_base_url`). `apps.connections.open` (app-level token) hands out a `ws://127.0.0.1:…`
URL; the socket says `hello`, and tests push envelopes with `await fake.push(...)` and wait for
the SDK's ack with `await fake.wait_ack(envelope_id)`. Every Web API call is recorded
(`fake.calls("chat.update")`); messages and native streams are kept as Slack would show them;
`fake.rate_limit("chat.update", times=2, retry_after=1)` answers 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from tests.fakes._loopback import LoopbackServer


@dataclass(frozen=True)
class SlackCall:
    """One Web API request as it arrived."""

    method: str
    args: dict[str, Any]
    token: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class SlackMessageState:
    """A message as the channel shows it; `versions` is every text it had, in order."""

    channel: str
    ts: str
    text: str
    thread_ts: str | None = None
    blocks: Any = None
    versions: list[str] = field(default_factory=list)
    update_times: list[float] = field(default_factory=list)
    streaming: bool = False


async def wait_until(condition: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `condition` until true or fail after `timeout` seconds (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class FakeSlack(LoopbackServer):
    """Slack's Web API (subset) and Socket Mode, recording what crossed the wire."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test-token",  # noqa: S107 - the fake\'s own test credential
        app_token: str = "xapp-test-token",  # noqa: S107 - the fake\'s own test credential
        team_id: str = "T0001",
        bot_user_id: str = "UBOT",
        streaming_supported: bool = True,
    ) -> None:
        super().__init__()
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.streaming_supported = streaming_supported
        self.recorded: list[SlackCall] = []
        self.messages: dict[str, SlackMessageState] = {}
        self.files: list[dict[str, Any]] = []
        self.ephemeral: list[dict[str, Any]] = []  # chat.postEphemeral: seen by one user only
        self.acks: dict[str, Any] = {}
        self.sockets: list[web.WebSocketResponse] = []
        self.connections_opened = 0
        self._limits: dict[str, list[float]] = {}
        self._ts = itertools.count(1)
        self._uploads: dict[str, dict[str, Any]] = {}
        self._ack_event = asyncio.Event()

    @property
    def api_url(self) -> str:
        """The base URL for slack_sdk (ends with a slash, like https://slack.com/api/)."""
        return f"{self.url}/api/"

    def build_app(self) -> web.Application:
        """Routes: /api/{method}, /upload/{id}, /socket."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{upload_id}", self._upload)
        app.router.add_get("/socket", self._socket)
        return app

    # -- scripting and reading --------------------------------------------------------------------
    def rate_limit(self, method: str, *, times: int = 1, retry_after: float = 1) -> None:
        """Answer the next `times` calls of `method` with HTTP 429 and Retry-After."""
        self._limits.setdefault(method, []).extend([retry_after] * times)

    def calls(self, method: str | None = None) -> list[SlackCall]:
        """Recorded Web API calls (optionally of one method), oldest first."""
        return [c for c in self.recorded if method is None or c.method == method]

    def visible_text(self, ts: str) -> str:
        """A message's text as a person would see it now."""
        return self.messages[ts].text

    def channel_messages(self, channel: str) -> list[SlackMessageState]:
        """Messages in a channel (threads included), in posting order."""
        return [m for m in self.messages.values() if m.channel == channel]

    # -- Socket Mode --------------------------------------------------------------------------------
    async def push(self, envelope_type: str, payload: dict[str, Any], *, retry_attempt: int = 0) -> str:
        """Send an envelope (events_api, slash_commands, interactive) to the connected app."""
        await wait_until(lambda: bool(self.sockets), what="a socket mode connection")
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": envelope_type,
            "payload": payload,
            "accepts_response_payload": envelope_type != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        await self.sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    async def wait_ack(self, envelope_id: str, *, timeout: float = 3.0) -> Any:
        """The app's ack for an envelope (fails if none comes within Slack's 3 seconds)."""
        await wait_until(lambda: envelope_id in self.acks, timeout=timeout, what=f"ack of {envelope_id}")
        return self.acks[envelope_id]

    async def drop_sockets(self) -> None:
        """Close every Socket Mode connection (the SDK should reconnect)."""
        for socket in list(self.sockets):
            await socket.close()

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self.sockets.append(socket)
        await socket.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self.sockets),
                    "debug_info": {"host": "fake-slack", "approximate_connection_time": 3600},
                    "connection_info": {"app_id": "A0001"},
                }
            )
        )
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if "envelope_id" in data:
                        self.acks[data["envelope_id"]] = data.get("payload")
        finally:
            if socket in self.sockets:
                self.sockets.remove(socket)
        return socket

    # -- Web API ----------------------------------------------------------------------------------
    async def _args(self, request: web.Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        raw = await request.read()
        if not raw:
            return args
        content_type = request.headers.get("Content-Type", "")
        if "json" in content_type:
            args.update(json.loads(raw))
        elif "multipart" in content_type:
            form = await request.post()
            args.update({k: v for k, v in form.items() if isinstance(v, str)})
        else:
            args.update(dict(parse_qsl(raw.decode())))
        return args

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._args(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.get("token")
        self.recorded.append(SlackCall(method=method, args=args, token=token))
        pending = self._limits.get(method)
        if pending:
            retry_after = pending.pop(0)
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": f"{retry_after:g}"}
            )
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        result: dict[str, Any] = handler(args)
        return web.json_response(result)

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.com/",
            "team": "Fake",
            "user": "orchestrator",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": "B0001",
        }

    def _m_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        self.connections_opened += 1
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket={uuid.uuid4().hex}"}

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        ts = self._next_ts()
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        text = str(args.get("text") or "")
        self.messages[ts] = SlackMessageState(
            channel=args["channel"],
            ts=ts,
            text=text,
            thread_ts=args.get("thread_ts"),
            blocks=blocks,
            versions=[text],
            update_times=[time.monotonic()],
        )
        return {"ok": True, "channel": args["channel"], "ts": ts, "message": {"text": text, "ts": ts}}

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(args.get("ts")))
        if message is None or message.channel != args.get("channel"):
            return {"ok": False, "error": "message_not_found"}
        if message.streaming:
            return {"ok": False, "error": "streaming_state_conflict"}
        message.text = str(args.get("text") or "")
        if "blocks" in args:
            blocks = args["blocks"]
            message.blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
        message.versions.append(message.text)
        message.update_times.append(time.monotonic())
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("channel") or not args.get("user"):
            return {"ok": False, "error": "invalid_arguments"}
        self.ephemeral.append(
            {"channel": args["channel"], "user": args["user"], "text": str(args.get("text") or ""),
             "thread_ts": args.get("thread_ts")}
        )
        return {"ok": True, "message_ts": self._next_ts()}

    def _m_chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.streaming_supported:
            return {"ok": False, "error": "unknown_method"}
        if not args.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        if not str(args.get("channel", "")).startswith("D") and not args.get("recipient_user_id"):
            return {"ok": False, "error": "missing_recipient_user_id"}
        ts = self._next_ts()
        text = str(args.get("markdown_text") or "")
        self.messages[ts] = SlackMessageState(
            channel=args["channel"],
            ts=ts,
            text=text,
            thread_ts=args["thread_ts"],
            versions=[text],
            update_times=[time.monotonic()],
            streaming=True,
        )
        return {"ok": True, "channel": args["channel"], "ts": ts}

    def _m_chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(args.get("ts")))
        if message is None or not message.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        text = str(args.get("markdown_text") or "")
        if len(text) > 12_000:
            return {"ok": False, "error": "msg_too_long"}
        message.text += text
        message.versions.append(message.text)
        message.update_times.append(time.monotonic())
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _m_chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(args.get("ts")))
        if message is None or not message.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message.text += str(args.get("markdown_text") or "")
        message.versions.append(message.text)
        message.update_times.append(time.monotonic())
        message.streaming = False
        return {"ok": True, "channel": message.channel, "ts": message.ts, "message": {"text": message.text}}

    def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        upload_id = f"F{uuid.uuid4().hex[:10].upper()}"
        self._uploads[upload_id] = {"filename": args.get("filename"), "length": int(args.get("length", 0))}
        return {"ok": True, "upload_url": f"{self.url}/upload/{upload_id}", "file_id": upload_id}

    def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files")
        entries = json.loads(files) if isinstance(files, str) else files or []
        done = []
        for entry in entries:
            upload = self._uploads.get(entry["id"], {})
            record = {
                "id": entry["id"],
                "title": entry.get("title"),
                "filename": upload.get("filename"),
                "content": upload.get("content", b""),
                "channel": args.get("channel_id"),
                "thread_ts": args.get("thread_ts"),
            }
            self.files.append(record)
            done.append({"id": entry["id"], "title": entry.get("title")})
        return {"ok": True, "files": done}

    async def _upload(self, request: web.Request) -> web.Response:
        upload_id = request.match_info["upload_id"]
        if upload_id not in self._uploads:
            return web.Response(status=404)
        content_type = request.headers.get("Content-Type", "")
        if "multipart" in content_type:
            reader = await request.multipart()
            part = await reader.next()
            data = await part.read() if part is not None else b""  # type: ignore[union-attr]
        else:
            data = await request.read()
        self._uploads[upload_id]["content"] = bytes(data)
        return web.Response(text="OK - " + str(len(data)))
