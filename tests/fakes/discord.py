"""A local Discord: the REST subset we call and a gateway WebSocket, on 127.0.0.1:0.

Point discord.py at it with `settings.discord.api_base_url = fake.api_url` (our platform sets
`discord.http.Route.BASE`); `GET /gateway/bot` hands out `ws://127.0.0.1:…/gateway`, which says
HELLO, answers IDENTIFY with READY and heartbeats with ACKs. Tests push interactions with
`await fake.dispatch_interaction(...)`. Messages (channel messages, interaction originals and
follow-ups) are kept as Discord would show them, with every version and edit time;
`fake.rate_limit("PATCH", times=1, retry_after=0.5)` answers 429 with X-RateLimit headers.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes._loopback import LoopbackServer
from tests.fakes.slack import wait_until

APPLICATION_ID = "900000000000000001"
BOT_USER_ID = "900000000000000002"


@dataclass(frozen=True)
class DiscordCall:
    """One REST request as it arrived."""

    method: str
    path: str
    body: Any
    authorization: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class DiscordMessageState:
    """A message as Discord shows it (`versions`: every content it had)."""

    id: str
    channel_id: str
    content: str
    embeds: list[Any]
    kind: str  # "channel", "original", "followup"
    versions: list[str] = field(default_factory=list)
    edit_times: list[float] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    components: list[Any] = field(default_factory=list)
    flags: int = 0


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON exactly as Discord labels it (discord.py compares the content type without charset)."""
    return web.Response(body=json.dumps(data).encode(), status=status, headers=headers, content_type="application/json")


class FakeDiscord(LoopbackServer):
    """Discord REST + gateway, recording what crossed the wire."""

    def __init__(self, *, bot_token: str = "discord-bot-token") -> None:  # noqa: S107 - test credential
        super().__init__()
        self.bot_token = bot_token
        self.recorded: list[DiscordCall] = []
        self.messages: dict[str, DiscordMessageState] = {}
        self.originals: dict[str, str] = {}  # interaction token -> message id
        self.callbacks: dict[str, dict[str, Any]] = {}  # interaction id -> callback body
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or guild id -> commands
        self.threads: list[dict[str, Any]] = []
        self.gateway_sockets: list[web.WebSocketResponse] = []
        self.identified = 0
        self.heartbeats = 0
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._limits: dict[str, list[float]] = {}
        self.interaction_channel_id = "700000000000000001"
        self.interaction_tokens: dict[str, str] = {}

    @property
    def api_url(self) -> str:
        """The REST base (like https://discord.com/api/v10)."""
        return f"{self.url}/api/v10"

    def _snowflake(self) -> str:
        return str(800000000000000000 + next(self._ids))

    def build_app(self) -> web.Application:
        """REST under /api/v10 and the gateway at /gateway."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        return app

    # -- scripting and reading --------------------------------------------------------------------
    def rate_limit(self, method: str, *, times: int = 1, retry_after: float = 0.5) -> None:
        """Answer the next `times` requests with this HTTP method with 429 (per-route bucket)."""
        self._limits.setdefault(method, []).extend([retry_after] * times)

    def calls(self, method: str | None = None, path_contains: str = "") -> list[DiscordCall]:
        """Recorded REST requests."""
        return [c for c in self.recorded if (method is None or c.method == method) and path_contains in c.path]

    async def dispatch_message(
        self, *, channel_id: str, user_id: str, content: str, guild_id: str = "600000000000000001",
        mention_bot: bool = False,
    ) -> str:
        """Send MESSAGE_CREATE: a person writing in a channel or thread; returns the message id."""
        await wait_until(lambda: bool(self.gateway_sockets) and self.identified > 0, what="gateway ready")
        message_id = self._snowflake()
        author = {"id": user_id, "username": f"user{user_id}", "discriminator": "0", "avatar": None,
                  "global_name": None}
        data = {
            "id": message_id, "channel_id": channel_id, "guild_id": guild_id, "author": author,
            "member": {"roles": [], "joined_at": "2024-01-01T00:00:00+00:00", "deaf": False, "mute": False,
                       "flags": 0},
            "content": (f"<@{BOT_USER_ID}> " if mention_bot else "") + content,
            "timestamp": datetime.now(UTC).isoformat(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [self._bot_user()] if mention_bot else [],
            "mention_roles": [], "attachments": [], "embeds": [], "pinned": False, "type": 0, "flags": 0,
            "components": [],
        }
        await self.gateway_sockets[-1].send_str(
            json.dumps({"op": 0, "t": "MESSAGE_CREATE", "s": next(self._seq), "d": data})
        )
        return message_id

    def component_payload(
        self, *, user_id: str, custom_id: str, message_id: str, guild_id: str = "600000000000000001"
    ) -> dict[str, Any]:
        """A MESSAGE_COMPONENT interaction: someone pressed a button on one of our messages."""
        message = self.messages[message_id]
        interaction_id = self._snowflake()
        token = f"itoken-{interaction_id}"
        user = {"id": user_id, "username": f"user{user_id}", "discriminator": "0", "avatar": None, "global_name": None}
        payload: dict[str, Any] = {
            "id": interaction_id, "application_id": APPLICATION_ID, "type": 3,
            "data": {"custom_id": custom_id, "component_type": 2},
            "channel_id": message.channel_id, "guild_id": guild_id, "token": token, "version": 1, "locale": "en-US",
            "app_permissions": "0", "entitlements": [], "authorizing_integration_owners": {},
            "attachment_size_limit": 10485760, "context": 0,
            "member": {"user": user, "roles": [], "joined_at": "2024-01-01T00:00:00+00:00", "deaf": False,
                       "mute": False, "permissions": "0", "flags": 0},
            "message": self._message_payload(message),
        }
        self.interaction_tokens[interaction_id] = token
        return payload

    async def dispatch_component(self, *, user_id: str, custom_id: str, message_id: str) -> tuple[str, str]:
        """Press a button over the gateway; returns (interaction id, token)."""
        await wait_until(lambda: bool(self.gateway_sockets) and self.identified > 0, what="gateway ready")
        payload = self.component_payload(user_id=user_id, custom_id=custom_id, message_id=message_id)
        await self.gateway_sockets[-1].send_str(
            json.dumps({"op": 0, "t": "INTERACTION_CREATE", "s": next(self._seq), "d": payload})
        )
        return payload["id"], payload["token"]

    def ephemeral_for(self, token: str) -> list[str]:
        """Ephemeral follow-ups (flags 64) sent with an interaction's token."""
        return [m.content for m in self.messages.values() if m.flags & 64 and m.kind == f"followup:{token}"]

    def original_for(self, token: str) -> DiscordMessageState | None:
        """The original response of the interaction with this token."""
        message_id = self.originals.get(token)
        return self.messages.get(message_id) if message_id else None

    def channel_messages(self, channel_id: str) -> list[DiscordMessageState]:
        """Messages in a channel (or thread), in order."""
        return [m for m in self.messages.values() if m.channel_id == channel_id]

    # -- gateway ----------------------------------------------------------------------------------
    async def dispatch_interaction(
        self,
        *,
        user_id: str,
        name: str,
        options: list[dict[str, Any]] | None = None,
        guild_id: str | None = None,
        locale: str = "en-US",
    ) -> tuple[str, str]:
        """Send INTERACTION_CREATE for a slash command; returns (interaction id, token)."""
        await wait_until(lambda: bool(self.gateway_sockets) and self.identified > 0, what="gateway ready")
        payload = self.interaction_payload(
            user_id=user_id, name=name, options=options, guild_id=guild_id, locale=locale
        )
        await self.gateway_sockets[-1].send_str(
            json.dumps({"op": 0, "t": "INTERACTION_CREATE", "s": next(self._seq), "d": payload})
        )
        return payload["id"], payload["token"]

    def interaction_payload(
        self,
        *,
        user_id: str,
        name: str,
        options: list[dict[str, Any]] | None = None,
        guild_id: str | None = None,
        locale: str = "en-US",
    ) -> dict[str, Any]:
        """An APPLICATION_COMMAND interaction as Discord sends it (gateway or HTTP)."""
        interaction_id = self._snowflake()
        token = f"itoken-{interaction_id}"
        user = {"id": user_id, "username": f"user{user_id}", "discriminator": "0", "avatar": None, "global_name": None}
        payload: dict[str, Any] = {
            "id": interaction_id,
            "application_id": APPLICATION_ID,
            "type": 2,
            "data": {"id": "1", "name": name, "type": 1, "options": options or []},
            "channel_id": self.interaction_channel_id,
            "token": token,
            "version": 1,
            "locale": locale,
            "app_permissions": "0",
            "entitlements": [],
            "authorizing_integration_owners": {},
            "attachment_size_limit": 10485760,
        }
        if guild_id:
            payload["guild_id"] = guild_id
            payload["channel"] = {
                "id": self.interaction_channel_id,
                "type": 0,
                "guild_id": guild_id,
                "name": "general",
                "position": 0,
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
                "rate_limit_per_user": 0,
                "topic": None,
                "last_message_id": None,
                "flags": 0,
            }
            payload["member"] = {
                "user": user,
                "roles": [],
                "joined_at": "2024-01-01T00:00:00+00:00",
                "deaf": False,
                "mute": False,
                "permissions": "0",
                "flags": 0,
            }
            payload["context"] = 0
        else:
            payload["user"] = user
            payload["channel"] = {"id": self.interaction_channel_id, "type": 1, "recipients": [user]}
            payload["context"] = 1
        self.interaction_tokens[interaction_id] = token
        return payload

    def accept_http_answer(self, interaction: dict[str, Any], answer: dict[str, Any]) -> None:
        """Play Discord's side of the HTTP endpoint: the answer (e.g. a deferral) creates the original."""
        self.callbacks[interaction["id"]] = answer
        if answer.get("type") in (4, 5):
            message = self._new_message(
                self.interaction_channel_id, answer.get("data") or {"content": ""}, [], "original"
            )
            self.originals[interaction["token"]] = message.id

    async def drop_gateway(self) -> None:
        """Close gateway connections (discord.py should reconnect or resume)."""
        for socket in list(self.gateway_sockets):
            await socket.close(code=4000)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await socket.prepare(request)
        self.gateway_sockets.append(socket)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        try:
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(message.data)
                op = frame.get("op")
                if op == 1:
                    self.heartbeats += 1
                    await socket.send_str(json.dumps({"op": 11}))
                elif op in (2, 6):
                    token = (frame.get("d") or {}).get("token")
                    if token != self.bot_token:
                        await socket.close(code=4004, message=b"Authentication failed.")
                        break
                    self.identified += 1
                    await socket.send_str(json.dumps({"op": 0, "t": "READY", "s": next(self._seq), "d": self._ready()}))
        finally:
            if socket in self.gateway_sockets:
                self.gateway_sockets.remove(socket)
        return socket

    def _ready(self) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self._bot_user(),
            "guilds": [],
            "session_id": f"session-{self.identified}",
            "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway",
            "shard": [0, 1],
            "application": {"id": APPLICATION_ID, "flags": 0},
        }

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": BOT_USER_ID,
            "username": "orchestrator",
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "flags": 0,
        }

    # -- REST ------------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> tuple[Any, list[dict[str, Any]]]:
        content_type = request.headers.get("Content-Type", "")
        files: list[dict[str, Any]] = []
        if "multipart" in content_type:
            body: Any = {}
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                data = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(data)
                else:
                    files.append({"filename": part.filename, "content": bytes(data)})  # type: ignore[union-attr]
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), files

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body, files = await self._body(request)
        auth = request.headers.get("Authorization")
        self.recorded.append(DiscordCall(method=request.method, path=path, body=body, authorization=auth))
        pending = self._limits.get(request.method)
        if pending:
            retry_after = pending.pop(0)
            return _json(
                {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
                status=429,
                headers={
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": f"{retry_after}",
                    "X-RateLimit-Bucket": "fake-bucket",
                    "X-RateLimit-Scope": "user",
                    "Retry-After": f"{retry_after}",
                    "Via": "1.1 google",  # discord.py reads a 429 without it as a Cloudflare ban
                },
            )
        webhook = path.startswith("/webhooks/") or path.startswith("/interactions/")
        if not webhook and auth != f"Bot {self.bot_token}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        return self._route(request.method, path, body, files, dict(request.query))

    def _message_payload(self, message: DiscordMessageState) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        return {
            "id": message.id,
            "channel_id": message.channel_id,
            "type": 0,
            "content": message.content,
            "author": self._bot_user(),
            "attachments": [
                {
                    "id": str(i),
                    "filename": a["filename"],
                    "size": len(a["content"]),
                    "url": "https://cdn.invalid/x",
                    "proxy_url": "https://cdn.invalid/x",
                }
                for i, a in enumerate(message.attachments)
            ],
            "embeds": message.embeds,
            "components": message.components,
            "mentions": [],
            "mention_roles": [],
            "pinned": False,
            "mention_everyone": False,
            "tts": False,
            "timestamp": now,
            "edited_timestamp": now if len(message.versions) > 1 else None,
            "flags": message.flags,
            "webhook_id": APPLICATION_ID if message.kind != "channel" else None,
        }

    def _new_message(self, channel_id: str, body: Any, files: list[dict[str, Any]], kind: str) -> DiscordMessageState:
        content = str((body or {}).get("content") or "")
        message = DiscordMessageState(
            id=self._snowflake(),
            channel_id=channel_id,
            content=content,
            embeds=list((body or {}).get("embeds") or []),
            kind=kind,
            versions=[content],
            edit_times=[time.monotonic()],
            attachments=files,
            components=list((body or {}).get("components") or []),
            flags=int((body or {}).get("flags") or 0),
        )
        self.messages[message.id] = message
        return message

    def _edit(self, message: DiscordMessageState, body: Any) -> web.Response:
        if "content" in (body or {}):
            message.content = str(body["content"] or "")
        if "embeds" in (body or {}):
            message.embeds = list(body["embeds"] or [])
        if "components" in (body or {}):
            message.components = list(body["components"] or [])
        message.versions.append(message.content)
        message.edit_times.append(time.monotonic())
        return _json(self._message_payload(message))

    def _route(
        self, method: str, path: str, body: Any, files: list[dict[str, Any]], query: dict[str, str]
    ) -> web.Response:
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/users/@me":
            return _json(self._bot_user())
        if method == "GET" and path == "/oauth2/applications/@me":
            return _json(
                {
                    "id": APPLICATION_ID,
                    "name": "Orchestrator",
                    "icon": None,
                    "description": "",
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "verify_key": "00",
                    "flags": 0,
                    "owner": self._bot_user(),
                    "team": None,
                    "summary": "",
                }
            )
        if method == "GET" and path == "/gateway/bot":
            return _json(
                {
                    "url": f"ws://127.0.0.1:{self.port}/gateway",
                    "shards": 1,
                    "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
                }
            )
        if method == "PUT" and parts[0] == "applications" and parts[-1] == "commands":
            scope = parts[3] if len(parts) == 5 else "global"
            stored = [
                dict(
                    command,
                    id=self._snowflake(),
                    application_id=parts[1],
                    version="1",
                    default_member_permissions=None,
                    dm_permission=True,
                    nsfw=False,
                )
                for command in body or []
            ]
            self.commands[scope] = stored
            return _json(stored)
        if method == "POST" and parts[0] == "interactions" and parts[-1] == "callback":
            interaction_id, token = parts[1], parts[2]
            self.callbacks[interaction_id] = body
            if (body or {}).get("type") == 6:  # deferred update of the message the button is on: nothing new
                return _json({"interaction": {"id": interaction_id, "type": 3}, "resource": {"type": 6}})
            message = self._new_message(self.interaction_channel_id, {"content": ""}, [], "original")
            self.originals[token] = message.id
            return _json(
                {
                    "interaction": {
                        "id": interaction_id,
                        "type": 2,
                        "response_message_id": message.id,
                        "response_message_loading": True,
                        "response_message_ephemeral": False,
                    },
                    "resource": {"type": (body or {}).get("type", 5)},
                }
            )
        if parts[0] == "webhooks" and len(parts) >= 3:
            token = parts[2]
            if method == "PATCH" and parts[-1] == "@original":
                original = self.original_for(token)
                if original is None:
                    return _json({"message": "Unknown Message", "code": 10008}, status=404)
                return self._edit(original, body)
            if method == "PATCH" and len(parts) == 5:
                followup = self.messages.get(parts[4])
                if followup is None:
                    return _json({"message": "Unknown Message", "code": 10008}, status=404)
                return self._edit(followup, body)
            if method == "POST" and len(parts) == 3:
                kind = f"followup:{token}" if int((body or {}).get("flags") or 0) & 64 else "followup"
                message = self._new_message(self.interaction_channel_id, body, files, kind)
                return _json(self._message_payload(message))
        if parts[0] == "channels":
            channel_id = parts[1]
            if method == "POST" and parts[2:] == ["messages"]:
                message = self._new_message(channel_id, body, files, "channel")
                return _json(self._message_payload(message))
            if method == "PATCH" and len(parts) == 4 and parts[2] == "messages":
                existing = self.messages.get(parts[3])
                if existing is None or existing.channel_id != channel_id:
                    return _json({"message": "Unknown Message", "code": 10008}, status=404)
                return self._edit(existing, body)
            if method == "POST" and len(parts) == 5 and parts[4] == "threads":
                thread_id = self._snowflake()
                thread = {
                    "id": thread_id,
                    "type": 11,
                    "parent_id": channel_id,
                    "name": (body or {}).get("name"),
                    "guild_id": "600000000000000001",
                    "owner_id": BOT_USER_ID,
                    "thread_metadata": {
                        "archived": False,
                        "auto_archive_duration": 1440,
                        "archive_timestamp": datetime.now(UTC).isoformat(),
                        "locked": False,
                    },
                    "message_count": 0,
                    "member_count": 1,
                    "rate_limit_per_user": 0,
                    "flags": 0,
                }
                self.threads.append(thread)
                return _json(thread)
        return _json({"message": f"404: Not Found {method} {path}", "code": 0}, status=404)
