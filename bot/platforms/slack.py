"""Slack through slack-bolt (async): Socket Mode with an app-level token, or HTTP mode behind the admin API.

Socket Mode: slack_sdk's aiohttp Socket Mode client asks `apps.connections.open` (on the Web API
base URL, so a local peer can stand in for Slack) for a WebSocket URL and reconnects by itself.
HTTP mode: the admin API passes each request's raw body and headers to `handle_http`; bolt
checks the v0 signature and the 5-minute timestamp window, answers url_verification, and
acknowledges within 3 s while our handler runs in the background. Retried events
(`X-Slack-Retry-Num`) are recognised by event id and not handled twice.

Only this module knows Slack payloads; everything leaving it is a `bot.platforms.events` value.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bot.logs import get_logger, register_secret
from bot.platforms.base import Backoff, EventSink, Platform
from bot.platforms.errors import DeliveryError, PlatformConfigError, RateLimitedError
from bot.platforms.events import (
    ButtonPress,
    Card,
    Conversation,
    IncomingCommand,
    IncomingMessage,
    MessageHandle,
    NativeStream,
    Place,
    ReactionAdded,
    Sender,
    StreamLimits,
)
from bot.platforms.streaming import EditBudget

if TYPE_CHECKING:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.settings import SlackSettings

log = get_logger("bot.platforms.slack")

PLATFORM = "slack"
# Slack renders up to ~4,000 characters of `text` well (longer is truncated in places).
SLACK_LIMITS = StreamLimits(max_chars=3900, min_edit_interval_s=1.0, max_messages=5)
CHAT_UPDATE_PER_MINUTE = 50  # Tier 3, shared by every stream in the workspace
NATIVE_UNAVAILABLE = frozenset(
    {
        "unknown_method",
        "method_not_supported_for_channel_type",
        "not_allowed_token_type",
        "missing_scope",
        "feature_not_enabled",
        "not_allowed",
        "invalid_arguments",
        "unsupported_team",
    }
)
_MENTION = re.compile(r"<@[A-Z0-9]+>\s*")
SEVERITY_EMOJI = {"critical": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}


class RecentIds:
    """Event ids seen in the last `ttl_s` seconds (Slack retries an event up to three times)."""

    def __init__(self, *, ttl_s: float = 900.0, max_size: int = 20_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._ttl_s = ttl_s
        self._max_size = max_size

    def first_time(self, event_id: str) -> bool:
        """True the first time an id is offered within the window, False for repeats."""
        now = time.monotonic()
        while self._seen and (now - next(iter(self._seen.values())) > self._ttl_s or len(self._seen) > self._max_size):
            self._seen.popitem(last=False)
        if event_id in self._seen:
            return False
        self._seen[event_id] = now
        return True


def _slack_error(err: Exception, what: str) -> Exception:
    """Translate slack_sdk's errors into ours (429 → RateLimitedError with Slack's Retry-After)."""
    from slack_sdk.errors import SlackApiError

    if isinstance(err, SlackApiError):
        response = err.response
        code = str(response.get("error") or "")
        if response.status_code == 429 or code == "ratelimited":
            headers = {k.lower(): v for k, v in (response.headers or {}).items()}
            raw = headers.get("retry-after", "1")
            retry_after = float(raw[0] if isinstance(raw, list) else raw)
            return RateLimitedError(f"Slack rate-limited {what}", retry_after=retry_after)
        return DeliveryError(f"Slack refused {what}: {code or response.status_code}", code=code or None)
    return DeliveryError(f"Slack {what} failed: {err}")


def card_blocks(card: Card) -> list[dict[str, Any]]:
    """A card as Block Kit blocks (header, text, two-column fields, footer)."""
    emoji = SEVERITY_EMOJI.get(card.severity or "", "")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{emoji} {card.title}".strip()[:150]}}
    ]
    if card.body:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": card.body[:3000]}})
    if card.fields:
        fields = [{"type": "mrkdwn", "text": f"*{name}*\n{value}"[:2000]} for name, value in card.fields[:10]]
        blocks.append({"type": "section", "fields": fields})
    if card.footer:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": card.footer[:300]}]})
    if card.actions:
        buttons: list[dict[str, Any]] = []
        for action in card.actions[:25]:
            button: dict[str, Any] = {
                "type": "button",
                "action_id": action.action_id[:255],
                "text": {"type": "plain_text", "text": action.label[:75]},
                "value": action.value[:2000],
            }
            if action.style in ("primary", "danger"):
                button["style"] = action.style
            buttons.append(button)
        blocks.append({"type": "actions", "elements": buttons})
    return blocks


class SlackMessage(MessageHandle):
    """A posted Slack message (its `ts` is its id)."""

    def __init__(self, client: AsyncWebClient, *, channel: str, ts: str) -> None:
        self._client = client
        self.channel = channel
        self.message_id = ts

    async def edit(self, text: str, *, card: Card | None = None) -> None:
        """chat.update with the full new text (and the card's blocks, which replace the buttons)."""
        kwargs: dict[str, Any] = {"channel": self.channel, "ts": self.message_id, "text": text}
        if card is not None:
            kwargs["blocks"] = card_blocks(card)
        try:
            await self._client.chat_update(**kwargs)
        except Exception as err:  # translated: the renderer reacts to RateLimitedError
            raise _slack_error(err, "chat.update") from err


class SlackNativeStream(NativeStream):
    """A message streamed with chat.startStream / appendStream / stopStream."""

    def __init__(self, client: AsyncWebClient, *, channel: str, ts: str) -> None:
        self._client = client
        self._channel = channel
        self.message_id = ts

    async def append(self, delta: str) -> None:
        """chat.appendStream."""
        try:
            await self._client.chat_appendStream(channel=self._channel, ts=self.message_id, markdown_text=delta)
        except Exception as err:  # translated for the renderer
            raise _slack_error(err, "chat.appendStream") from err

    async def stop(self, delta: str = "") -> None:
        """chat.stopStream with the last text."""
        try:
            await self._client.chat_stopStream(channel=self._channel, ts=self.message_id, markdown_text=delta or None)
        except Exception as err:  # translated for the renderer
            raise _slack_error(err, "chat.stopStream") from err


class SlackConversation(Conversation):
    """A channel, or a thread (`thread_id` is the parent's ts)."""

    def __init__(self, platform: SlackPlatform, place: Place, sender: Sender | None = None) -> None:
        self._platform = platform
        self.place = place
        self.sender = sender
        self.limits = SLACK_LIMITS

    async def say(self, text: str, *, card: Card | None = None) -> MessageHandle:
        """chat.postMessage (Block Kit when a card is given; `text` is the notification fallback)."""
        client = self._platform.client
        kwargs: dict[str, Any] = {"channel": self.place.channel_id, "text": text}
        if self.place.thread_id:
            kwargs["thread_ts"] = self.place.thread_id
        if card is not None:
            kwargs["blocks"] = card_blocks(card)
        try:
            response = await client.chat_postMessage(**kwargs)
        except Exception as err:  # translated for the dispatcher and the renderer
            raise _slack_error(err, "chat.postMessage") from err
        return SlackMessage(client, channel=str(response["channel"]), ts=str(response["ts"]))

    async def upload(self, *, filename: str, content: bytes, comment: str = "") -> None:
        """files.uploadV2 into the channel/thread."""
        kwargs: dict[str, Any] = {
            "channel": self.place.channel_id,
            "filename": filename,
            "content": content,
            "title": filename,
        }
        if comment:
            kwargs["initial_comment"] = comment
        if self.place.thread_id:
            kwargs["thread_ts"] = self.place.thread_id
        try:
            await self._platform.client.files_upload_v2(**kwargs)
        except Exception as err:  # translated for the renderer
            raise _slack_error(err, "files.uploadV2") from err

    async def open_thread(self, *, title: str, anchor: MessageHandle) -> Conversation:
        """Replies under `anchor` form the thread."""
        place = Place(platform=PLATFORM, channel_id=self.place.channel_id, thread_id=anchor.message_id)
        return SlackConversation(self._platform, place, self.sender)

    def at(self, place: Place) -> Conversation:
        """The same person, in another channel or thread."""
        return SlackConversation(self._platform, place, self.sender)

    def message(self, message_id: str) -> MessageHandle:
        """A message of this channel by its ts."""
        return SlackMessage(self._platform.client, channel=self.place.channel_id, ts=message_id)

    async def say_private(self, text: str) -> None:
        """chat.postEphemeral: only the sender sees it (a normal message when there is no sender)."""
        if self.sender is None:
            await self.say(text)
            return
        kwargs: dict[str, Any] = {"channel": self.place.channel_id, "user": self.sender.user_id, "text": text}
        if self.place.thread_id:
            kwargs["thread_ts"] = self.place.thread_id
        try:
            await self._platform.client.chat_postEphemeral(**kwargs)
        except Exception as err:  # translated for the dispatcher
            raise _slack_error(err, "chat.postEphemeral") from err

    async def start_native_stream(self, text: str) -> NativeStream | None:
        """chat.startStream in this thread, when the workspace supports it; None → use edits."""
        if not self._platform.native_streaming or not self.place.thread_id:
            return None
        kwargs: dict[str, Any] = {
            "channel": self.place.channel_id,
            "thread_ts": self.place.thread_id,
            "markdown_text": text,
        }
        if self.sender is not None and not self.place.channel_id.startswith("D"):
            # Required in channels: the stream is addressed to the person who asked.
            kwargs["recipient_user_id"] = self.sender.user_id
            if self.sender.team_id:
                kwargs["recipient_team_id"] = self.sender.team_id
        try:
            response = await self._platform.client.chat_startStream(**kwargs)
        except Exception as err:  # unavailable → fall back to edits for good; 429 → renderer waits
            translated = _slack_error(err, "chat.startStream")
            if isinstance(translated, DeliveryError) and translated.code in NATIVE_UNAVAILABLE:
                log.info("slack native streaming unavailable; using message edits", code=translated.code)
                self._platform.native_streaming = False
                return None
            raise translated from err
        return SlackNativeStream(self._platform.client, channel=self.place.channel_id, ts=str(response["ts"]))


class SlackPlatform(Platform):
    """Slack in Socket Mode (app token set) or HTTP mode (signing secret set, admin API mounts it)."""

    name = PLATFORM

    def __init__(
        self,
        *,
        settings: SlackSettings,
        sink: EventSink,
        native_streaming: bool = True,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(sink=sink, backoff=backoff)
        if settings.bot_token is None:
            raise PlatformConfigError(
                "Slack needs a bot token", hint="set ORCH_SLACK__BOT_TOKEN (xoxb-…) from the app's OAuth page"
            )
        if settings.app_token is None and settings.signing_secret is None:
            raise PlatformConfigError(
                "Slack needs an app-level token (Socket Mode) or a signing secret (HTTP mode)",
                hint="set ORCH_SLACK__APP_TOKEN (xapp-…) or ORCH_SLACK__SIGNING_SECRET",
            )
        for secret in (settings.bot_token, settings.app_token, settings.signing_secret):
            if secret is not None:
                register_secret(secret.get_secret_value())
        self.settings = settings
        self.native_streaming = native_streaming
        self.edit_budget = EditBudget(per_minute=CHAT_UPDATE_PER_MINUTE)
        self.recent_events = RecentIds()
        self.bot_user_id: str | None = None
        self.team_id: str | None = None
        self.client = self._make_client()
        self.app = self._make_app()
        self._socket: AsyncSocketModeHandler | None = None

    @property
    def socket_mode(self) -> bool:
        """Socket Mode when an app-level token is configured."""
        return self.settings.app_token is not None

    def _make_client(self) -> AsyncWebClient:
        from slack_sdk.web.async_client import AsyncWebClient

        base_url = self.settings.api_base_url.rstrip("/") + "/"
        assert self.settings.bot_token is not None
        return AsyncWebClient(token=self.settings.bot_token.get_secret_value(), base_url=base_url)

    def _make_app(self) -> AsyncApp:
        from slack_bolt.async_app import AsyncApp

        secret = self.settings.signing_secret.get_secret_value() if self.settings.signing_secret else None
        app = AsyncApp(
            client=self.client,
            signing_secret=secret or "socket-mode-has-no-signature",
            request_verification_enabled=secret is not None,
            process_before_response=False,
        )
        app.command(re.compile(r"^/[\w-]+$"))(self._on_command)
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.event("reaction_added")(self._on_reaction)
        app.action(re.compile(r".+"))(self._on_action)
        return app

    # -- connection -------------------------------------------------------------------------------
    async def _connect(self) -> None:
        from slack_sdk.errors import SlackApiError

        try:
            identity = await self.client.auth_test()
        except SlackApiError as err:
            if err.response.get("error") in ("invalid_auth", "not_authed", "account_inactive", "token_revoked"):
                raise PlatformConfigError(
                    f"Slack rejected the bot token ({err.response.get('error')})",
                    hint="reinstall the app and copy the new xoxb- token",
                ) from err
            raise
        self.bot_user_id = identity.get("user_id")
        self.team_id = identity.get("team_id")
        if self.socket_mode:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            assert self.settings.app_token is not None
            self._socket = AsyncSocketModeHandler(
                self.app, app_token=self.settings.app_token.get_secret_value(), web_client=self.client
            )
            await self._socket.connect_async()  # type: ignore[no-untyped-call]
        log.info("slack connected", mode="socket" if self.socket_mode else "http", team=self.team_id)

    async def _disconnect(self) -> None:
        if self._socket is not None:
            socket, self._socket = self._socket, None
            await socket.close_async()  # type: ignore[no-untyped-call]

    def conversation(self, place: Place, sender: Sender | None = None) -> Conversation:
        """A channel or thread to post into (on behalf of `sender`, whose id native streams need)."""
        return SlackConversation(self, place, sender)

    # -- HTTP mode --------------------------------------------------------------------------------
    async def handle_http(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Handle one request Slack POSTed to the admin API: (status, headers, body) to send back."""
        from slack_bolt.request.async_request import AsyncBoltRequest

        request = AsyncBoltRequest(
            body=body.decode("utf-8", "replace"),
            headers={key.lower(): value for key, value in headers.items()},
        )
        request.context["retry_num"] = headers.get("X-Slack-Retry-Num") or headers.get("x-slack-retry-num")
        response = await self.app.async_dispatch(request)
        flat = {
            key: values[0] if isinstance(values, list | tuple) else str(values)
            for key, values in response.headers.items()
        }
        return response.status, flat, (response.body or "").encode("utf-8")

    # -- listeners: Slack payloads become neutral events here ----------------------------------------
    def _sender(self, user_id: str, *, name: str | None = None, team_id: str | None = None) -> Sender:
        return Sender(platform=PLATFORM, user_id=user_id, display_name=name, team_id=team_id or self.team_id)

    def _fresh(self, body: Mapping[str, Any]) -> bool:
        event_id = body.get("event_id")
        if not event_id:
            return True
        if self.recent_events.first_time(str(event_id)):
            return True
        log.info("slack event repeated; ignored", event_id=event_id)
        return False

    async def _on_command(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        sender = self._sender(str(body.get("user_id")), name=body.get("user_name"), team_id=body.get("team_id"))
        place = Place(platform=PLATFORM, channel_id=str(body.get("channel_id")))
        command = IncomingCommand(
            sender=sender,
            place=place,
            name=str(body.get("command", "")).lstrip("/"),
            text=str(body.get("text") or ""),
            event_id=body.get("trigger_id"),
        )
        self.dispatch(command, SlackConversation(self, place, sender))

    async def _on_mention(self, ack: Any, body: dict[str, Any], event: dict[str, Any]) -> None:
        await ack()
        if self._fresh(body):
            self._message(event, body)

    async def _on_message(self, ack: Any, body: dict[str, Any], event: dict[str, Any]) -> None:
        await ack()
        # Bots (ourselves included), edits and joins are ignored.
        if event.get("bot_id") or event.get("subtype") or event.get("user") in (None, self.bot_user_id):
            return
        if event.get("channel_type") == "im":
            if self._fresh(body):
                self._message(event, body)
            return
        # In channels only thread replies, and not those naming us: they also arrive as app_mention.
        thread_ts = event.get("thread_ts")
        if not thread_ts or thread_ts == event.get("ts") or f"<@{self.bot_user_id}>" in str(event.get("text") or ""):
            return
        if self._fresh(body):
            self._message(event, body, addressed=False)

    def _message(self, event: Mapping[str, Any], body: Mapping[str, Any], *, addressed: bool = True) -> None:
        text = _MENTION.sub("", str(event.get("text") or "")).strip()
        sender = self._sender(str(event.get("user")), team_id=body.get("team_id"))
        thread = str(event.get("thread_ts") or event.get("ts"))
        place = Place(platform=PLATFORM, channel_id=str(event.get("channel")), thread_id=thread)
        if addressed and text.startswith("/"):
            name, _, rest = text[1:].partition(" ")
            incoming: IncomingCommand | IncomingMessage = IncomingCommand(
                sender=sender, place=place, name=name, text=rest.strip(), event_id=body.get("event_id")
            )
        else:
            incoming = IncomingMessage(
                sender=sender,
                place=place,
                text=text,
                message_id=str(event.get("ts")),
                event_id=body.get("event_id"),
                addressed=addressed,
            )
        self.dispatch(incoming, SlackConversation(self, place, sender))

    async def _on_reaction(self, ack: Any, body: dict[str, Any], event: dict[str, Any]) -> None:
        await ack()
        item = event.get("item") or {}
        if item.get("type") != "message" or not self._fresh(body):
            return
        sender = self._sender(str(event.get("user")), team_id=body.get("team_id"))
        place = Place(platform=PLATFORM, channel_id=str(item.get("channel")))
        reaction = ReactionAdded(
            sender=sender,
            place=place,
            message_id=str(item.get("ts")),
            emoji=str(event.get("reaction")),
            event_id=body.get("event_id"),
        )
        self.dispatch(reaction, SlackConversation(self, place, sender))

    async def _on_action(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        actions = body.get("actions") or []
        if not actions:
            return
        action = actions[0]
        user = body.get("user") or {}
        channel = (body.get("channel") or {}).get("id") or ""
        message = body.get("message") or {}
        sender = self._sender(
            str(user.get("id")), name=user.get("username"), team_id=(body.get("team") or {}).get("id")
        )
        place = Place(
            platform=PLATFORM, channel_id=str(channel), thread_id=message.get("thread_ts") or message.get("ts")
        )
        press = ButtonPress(
            sender=sender,
            place=place,
            message_id=str(message.get("ts") or ""),
            action_id=str(action.get("action_id")),
            value=str(action.get("value") or ""),
        )
        self.dispatch(press, SlackConversation(self, place, sender))
