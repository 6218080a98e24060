"""Discord through discord.py: slash commands over the gateway or the HTTP interactions endpoint.

Commands are registered as Discord application commands built from the command registry
(`sync_commands`, run by `orchestrator discord sync [--guild ID]`), with pt-BR descriptions as
Discord localisations. An interaction is deferred at once (Discord wants an answer within 3 s),
then the first reply edits the deferred "thinking" message and later ones are follow-ups; long work
opens a thread on the reply and continues there with the bot token (the interaction token lasts
15 minutes). Every REST call goes through discord.py's HTTP client, which honours the
`X-RateLimit-*` headers and 429 `retry_after` per bucket. The REST base is
`settings.discord.api_base_url` (set on `discord.http.Route.BASE`) and the gateway URL comes
from `GET /gateway/bot`, so a local peer can stand in for Discord.

HTTP interactions (an "Interactions Endpoint URL" in the developer portal) arrive through
`handle_http`, mounted by the admin API: the Ed25519 signature over timestamp + raw body is
checked with the application's public key, and stale timestamps are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from bot.logs import get_logger, register_secret
from bot.platforms.base import Backoff, EventSink, Platform
from bot.platforms.errors import DeliveryError, PlatformConfigError, SignatureError
from bot.platforms.events import (
    ButtonPress,
    Card,
    Conversation,
    IncomingCommand,
    IncomingMessage,
    MessageHandle,
    Place,
    ReactionAdded,
    Sender,
    StreamLimits,
)
from bot.platforms.i18n import CATALOGUE, help_text

if TYPE_CHECKING:
    import discord
    from discord.http import HTTPClient

    from bot.commands.registry import CommandRegistry, CommandSpec, Param
    from bot.settings import DiscordSettings

log = get_logger("bot.platforms.discord")

PLATFORM = "discord"
DISCORD_LIMITS = StreamLimits(max_chars=2000, min_edit_interval_s=1.0, max_messages=5)
SIGNATURE_WINDOW_S = 300
SEVERITY_COLOUR = {"critical": 0xE01E5A, "warning": 0xECB22E, "info": 0x36C5F0}
# Interaction and callback types (discord-api-docs interactions/receiving-and-responding).
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT = 1, 2, 3
PONG, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE = 1, 5, 6
ACTION_ROW, BUTTON = 1, 2
BUTTON_STYLE = {"primary": 1, "danger": 4}  # anything else: secondary (2)
EPHEMERAL = 64
CUSTOM_ID_SEPARATOR = "|"  # a button's custom_id carries "<action_id>|<value>"
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER = 1, 2, 3, 4


class CommandOption(TypedDict, total=False):
    """An application command option as Discord's API takes it."""

    type: int
    name: str
    description: str
    description_localizations: dict[str, str]
    required: bool
    choices: list[dict[str, str]]
    min_value: int
    max_value: int
    max_length: int
    options: list[CommandOption]


class CommandPayload(TypedDict, total=False):
    """An application command (type 1, CHAT_INPUT) for the bulk-overwrite endpoint."""

    name: str
    type: int
    description: str
    description_localizations: dict[str, str]
    options: list[CommandOption]


class InteractionPayload(TypedDict, total=False):
    """The fields of an interaction we read (gateway INTERACTION_CREATE or HTTP POST body)."""

    id: str
    application_id: str
    type: int
    data: dict[str, Any]
    guild_id: str
    channel_id: str
    channel: dict[str, Any]
    member: dict[str, Any]
    user: dict[str, Any]
    token: str
    locale: str
    message: dict[str, Any]


def load_discord() -> Any:
    """Import discord.py; on Python 3.11 it imports the deprecated `audioop` (voice), which is not ours."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'audioop' is deprecated", category=DeprecationWarning)
        import discord

    return discord


# -- command payloads from the registry ------------------------------------------------------------
def _describe(text: str) -> str:
    return (text or "-")[:100]


def _option(param: Param) -> CommandOption:
    option: CommandOption = {
        "type": INTEGER if param.kind == "int" else STRING,
        "name": param.name.lower(),
        "description": _describe(param.help or param.name),
        "required": param.required and not param.option,
    }
    if param.kind == "choice":
        option["choices"] = [{"name": choice, "value": choice} for choice in param.choices[:25]]
    if param.kind == "int":
        if param.minimum is not None:
            option["min_value"] = param.minimum
        if param.maximum is not None:
            option["max_value"] = param.maximum
    else:
        option["max_length"] = min(param.max_length, 6000)
    return option


def _options(spec: CommandSpec) -> list[CommandOption]:
    options = [_option(param) for param in spec.params]
    return sorted(options, key=lambda option: not option.get("required", False))  # required first


def _localised(spec: CommandSpec) -> dict[str, str]:
    entry = CATALOGUE.get(f"help.{spec.name}")
    return {"pt-BR": _describe(help_text(spec, "pt-BR"))} if entry else {}


def command_payloads(registry: CommandRegistry) -> list[CommandPayload]:
    """Every registry command as Discord application commands (groups become subcommands)."""
    payloads: list[CommandPayload] = []
    for name in registry.top_level_names():
        spec = registry.get(name)
        if spec is not None:
            payload: CommandPayload = {
                "name": name,
                "type": 1,
                "description": _describe(spec.summary),
                "options": _options(spec),
            }
            if localised := _localised(spec):
                payload["description_localizations"] = localised
            payloads.append(payload)
            continue
        subs: list[CommandOption] = []
        for sub in registry.subcommands(name):
            option: CommandOption = {
                "type": SUB_COMMAND,
                "name": sub.path[1],
                "description": _describe(sub.summary),
                "options": _options(sub),
            }
            if localised := _localised(sub):
                option["description_localizations"] = localised
            subs.append(option)
        payloads.append(
            {
                "name": name,
                "type": 1,
                "description": _describe(f"/{name}: " + ", ".join(str(sub["name"]) for sub in subs)),
                "options": subs,
            }
        )
    return payloads


def _quote(value: str) -> str:
    if value and not any(ch.isspace() or ch in "\"'" for ch in value):
        return value
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace('"', "'") + '"'


def interaction_command_line(data: Mapping[str, Any], registry: CommandRegistry | None) -> tuple[str, str]:
    """(command name, text) from an interaction's `data`, in the grammar the registry parses."""
    name = str(data.get("name", ""))
    options: list[Mapping[str, Any]] = list(data.get("options") or [])
    words: list[str] = []
    if options and options[0].get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP):
        words.append(str(options[0]["name"]))
        options = list(options[0].get("options") or [])
    given = {str(option["name"]): str(option.get("value", "")) for option in options}
    spec = registry.get(" ".join([name, *words])) if registry is not None else None
    if spec is None:
        words.extend(_quote(value) for value in given.values())
        return name, " ".join(words)
    positional: list[str] = []
    for param in spec.params:
        value = given.get(param.name.lower())
        if value is None:
            continue
        if param.option:
            words.extend([f"--{param.name}", _quote(value)])
        elif param.kind == "text":
            positional.append(value)
        else:
            positional.append(_quote(value))
    return name, " ".join(words + positional)


# -- signatures ---------------------------------------------------------------------------------
def verify_signature(*, public_key_hex: str, body: bytes, headers: Mapping[str, str], now: float | None = None) -> None:
    """Check Discord's Ed25519 signature over timestamp + body; raise SignatureError if it fails."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    lowered = {key.lower(): value for key, value in headers.items()}
    signature = lowered.get("x-signature-ed25519", "")
    timestamp = lowered.get("x-signature-timestamp", "")
    if not signature or not timestamp:
        raise SignatureError("missing Discord signature headers")
    try:
        sent_at = float(timestamp)
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        key.verify(bytes.fromhex(signature), timestamp.encode() + body)
    except (ValueError, InvalidSignature) as err:
        raise SignatureError("bad Discord signature") from err
    if abs((now if now is not None else time.time()) - sent_at) > SIGNATURE_WINDOW_S:
        raise SignatureError("stale Discord request timestamp")


# -- outgoing -----------------------------------------------------------------------------------
def card_embed(card: Card) -> dict[str, Any]:
    """A card as a Discord embed."""
    embed: dict[str, Any] = {"title": card.title[:256], "type": "rich"}
    if card.body:
        embed["description"] = card.body[:4096]
    if card.fields:
        embed["fields"] = [
            {"name": name[:256], "value": (value or "-")[:1024], "inline": True} for name, value in card.fields[:25]
        ]
    if card.severity in SEVERITY_COLOUR:
        embed["color"] = SEVERITY_COLOUR[card.severity]
    if card.footer:
        embed["footer"] = {"text": card.footer[:2048]}
    return embed


def card_components(card: Card) -> list[dict[str, Any]]:
    """A card's buttons as action rows (five buttons a row); no buttons is an empty list, which removes them."""
    buttons = [
        {
            "type": BUTTON,
            "style": BUTTON_STYLE.get(action.style or "", 2),
            "label": action.label[:80],
            "custom_id": f"{action.action_id}{CUSTOM_ID_SEPARATOR}{action.value}"[:100],
        }
        for action in card.actions[:25]
    ]
    return [{"type": ACTION_ROW, "components": buttons[i : i + 5]} for i in range(0, len(buttons), 5)]


def _message_json(text: str, card: Card | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"content": text[:2000], "allowed_mentions": {"parse": []}}
    if card is not None:
        payload["embeds"] = [card_embed(card)]
        payload["content"] = ""
        payload["components"] = card_components(card)
    return payload


def _edit_json(text: str, card: Card | None) -> dict[str, Any]:
    return _message_json(text, card) if card is not None else {"content": text[:2000]}


class DiscordRest:
    """The REST calls we make, through discord.py's rate-limit-aware HTTP client."""

    def __init__(self, http: HTTPClient, *, application_id: str) -> None:
        self.http = http
        self.application_id = application_id

    async def call(self, method: str, path: str, *, json_body: Any = None, files: Any = None, **params: Any) -> Any:
        """One request; discord.py waits out 429s and exhausted buckets itself."""
        discord = load_discord()
        from discord.http import Route

        route = Route(method, path, **params)
        try:
            if files is not None:
                form: list[dict[str, Any]] = [{"name": "payload_json", "value": json.dumps(json_body or {})}]
                form.extend(
                    {
                        "name": f"files[{index}]",
                        "value": file.fp,
                        "filename": file.filename,
                        "content_type": "application/octet-stream",
                    }
                    for index, file in enumerate(files)
                )
                return await self.http.request(route, form=form, files=files)
            if json_body is None:
                return await self.http.request(route)
            return await self.http.request(route, json=json_body)
        except discord.HTTPException as err:  # translated: the dispatcher shows a short message
            raise DeliveryError(
                f"Discord refused {method} {path}: {err.text or err.status}", code=str(err.code)
            ) from err

    async def interaction_callback(self, interaction_id: str, token: str, payload: dict[str, Any]) -> None:
        """Answer (or defer) an interaction that arrived over the gateway."""
        await self.call(
            "POST",
            "/interactions/{interaction_id}/{webhook_token}/callback",
            json_body=payload,
            interaction_id=interaction_id,
            webhook_token=token,
        )


class _WebhookMessage(MessageHandle):
    def __init__(self, rest: DiscordRest, *, token: str, message_id: str, original: bool) -> None:
        self._rest = rest
        self._token = token
        self._original = original
        self.message_id = message_id

    async def edit(self, text: str, *, card: Card | None = None) -> None:
        """Edit the interaction's original response or a follow-up."""
        await self._rest.call(
            "PATCH",
            "/webhooks/{webhook_id}/{webhook_token}/messages/" + ("@original" if self._original else "{message_id}"),
            json_body=_edit_json(text, card),
            webhook_id=self._rest.application_id,
            webhook_token=self._token,
            message_id=self.message_id,
        )


class _ChannelMessage(MessageHandle):
    def __init__(self, rest: DiscordRest, *, channel_id: str, message_id: str) -> None:
        self._rest = rest
        self.channel_id = channel_id
        self.message_id = message_id

    async def edit(self, text: str, *, card: Card | None = None) -> None:
        """PATCH the channel message."""
        await self._rest.call(
            "PATCH",
            "/channels/{channel_id}/messages/{message_id}",
            json_body=_edit_json(text, card),
            channel_id=self.channel_id,
            message_id=self.message_id,
        )


class DiscordChannelConversation(Conversation):
    """A channel or thread, written to with the bot token."""

    def __init__(self, rest: DiscordRest, place: Place, sender: Sender | None = None) -> None:
        self._rest = rest
        self.place = place
        self.sender = sender
        self.limits = DISCORD_LIMITS

    async def say(self, text: str, *, card: Card | None = None) -> MessageHandle:
        """POST a message to the channel."""
        message = await self._rest.call(
            "POST",
            "/channels/{channel_id}/messages",
            json_body=_message_json(text, card),
            channel_id=self.place.channel_id,
        )
        return _ChannelMessage(self._rest, channel_id=self.place.channel_id, message_id=str(message["id"]))

    async def upload(self, *, filename: str, content: bytes, comment: str = "") -> None:
        """A message with the file attached."""
        discord = load_discord()

        await self._rest.call(
            "POST",
            "/channels/{channel_id}/messages",
            json_body={"content": comment[:2000], "attachments": [{"id": 0, "filename": filename}]},
            files=[discord.File(io.BytesIO(content), filename=filename)],
            channel_id=self.place.channel_id,
        )

    async def open_thread(self, *, title: str, anchor: MessageHandle) -> Conversation:
        """A public thread started on `anchor`; in DMs (no threads) the DM itself."""
        return await _open_thread(self._rest, self.place, title=title, anchor=anchor, sender=self.sender)

    def at(self, place: Place) -> Conversation:
        """Another channel or thread, with the bot token."""
        return DiscordChannelConversation(self._rest, place, self.sender)

    def message(self, message_id: str) -> MessageHandle:
        """A message of this channel."""
        return _ChannelMessage(self._rest, channel_id=self.place.channel_id, message_id=message_id)


async def _open_thread(
    rest: DiscordRest, place: Place, *, title: str, anchor: MessageHandle, sender: Sender | None
) -> Conversation:
    try:
        thread = await rest.call(
            "POST",
            "/channels/{channel_id}/messages/{message_id}/threads",
            json_body={"name": (title or "task")[:100], "auto_archive_duration": 1440},
            channel_id=place.channel_id,
            message_id=anchor.message_id,
        )
    except DeliveryError as err:
        if err.code in ("50024", "50008"):  # cannot start a thread here (DMs): stay in the channel
            return DiscordChannelConversation(rest, place, sender)
        raise
    return DiscordChannelConversation(rest, Place(PLATFORM, str(thread["id"])), sender)


class DiscordInteractionConversation(Conversation):
    """Replies to one deferred interaction: the first edits the original, later ones follow up."""

    def __init__(self, rest: DiscordRest, place: Place, *, token: str, sender: Sender | None = None) -> None:
        self._rest = rest
        self._token = token
        self._answered = False
        self._lock = asyncio.Lock()
        self.place = place
        self.sender = sender
        self.limits = DISCORD_LIMITS

    async def say(self, text: str, *, card: Card | None = None) -> MessageHandle:
        """Edit the deferred response the first time, then send follow-ups."""
        async with self._lock:
            if not self._answered:
                message = await self._rest.call(
                    "PATCH",
                    "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
                    json_body=_message_json(text, card),
                    webhook_id=self._rest.application_id,
                    webhook_token=self._token,
                )
                self._answered = True
                return _WebhookMessage(self._rest, token=self._token, message_id=str(message["id"]), original=True)
        message = await self._rest.call(
            "POST",
            "/webhooks/{webhook_id}/{webhook_token}?wait=true",
            json_body=_message_json(text, card),
            webhook_id=self._rest.application_id,
            webhook_token=self._token,
        )
        return _WebhookMessage(self._rest, token=self._token, message_id=str(message["id"]), original=False)

    async def upload(self, *, filename: str, content: bytes, comment: str = "") -> None:
        """A follow-up with the file attached."""
        discord = load_discord()

        await self._rest.call(
            "POST",
            "/webhooks/{webhook_id}/{webhook_token}?wait=true",
            json_body={"content": comment[:2000], "attachments": [{"id": 0, "filename": filename}]},
            files=[discord.File(io.BytesIO(content), filename=filename)],
            webhook_id=self._rest.application_id,
            webhook_token=self._token,
        )

    async def open_thread(self, *, title: str, anchor: MessageHandle) -> Conversation:
        """A thread on the reply; work there uses the bot token, not the 15-minute interaction token."""
        return await _open_thread(self._rest, self.place, title=title, anchor=anchor, sender=self.sender)

    def at(self, place: Place) -> Conversation:
        """Another channel or thread, with the bot token (the interaction token expires)."""
        return DiscordChannelConversation(self._rest, place, self.sender)

    def message(self, message_id: str) -> MessageHandle:
        """A message of the interaction's channel (e.g. the card whose button was pressed)."""
        return _ChannelMessage(self._rest, channel_id=self.place.channel_id, message_id=message_id)

    async def say_private(self, text: str) -> None:
        """An ephemeral follow-up: only the person who pressed or typed sees it."""
        await self._rest.call(
            "POST",
            "/webhooks/{webhook_id}/{webhook_token}?wait=true",
            json_body={"content": text[:2000], "flags": EPHEMERAL, "allowed_mentions": {"parse": []}},
            webhook_id=self._rest.application_id,
            webhook_token=self._token,
        )


# -- the platform -------------------------------------------------------------------------------
class DiscordPlatform(Platform):
    """Discord over the gateway (discord.py Client) and/or the HTTP interactions endpoint."""

    name = PLATFORM

    def __init__(
        self,
        *,
        settings: DiscordSettings,
        sink: EventSink,
        registry: CommandRegistry | None = None,
        gateway: bool = True,
        guild_ready_timeout_s: float = 2.0,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(sink=sink, backoff=backoff)
        if settings.bot_token is None:
            raise PlatformConfigError(
                "Discord needs a bot token", hint="set ORCH_DISCORD__BOT_TOKEN from the developer portal's Bot page"
            )
        # After READY discord.py waits this long for GUILD_CREATE events before it calls itself ready.
        self.guild_ready_timeout_s = guild_ready_timeout_s
        register_secret(settings.bot_token.get_secret_value())
        self.settings = settings
        self.registry = registry
        self.gateway = gateway
        self.client: discord.Client | None = None
        self.rest: DiscordRest | None = None
        self._http: HTTPClient | None = None
        self._gateway_task: asyncio.Task[None] | None = None

    def _token(self) -> str:
        assert self.settings.bot_token is not None
        return self.settings.bot_token.get_secret_value()

    async def _connect(self) -> None:
        import yarl

        discord = load_discord()
        from discord.gateway import DiscordWebSocket
        from discord.http import HTTPClient, Route

        Route.BASE = self.settings.api_base_url.rstrip("/")
        if not self.gateway:
            self._http = HTTPClient(asyncio.get_running_loop())
            try:
                await self._http.static_login(self._token())
            except discord.LoginFailure as err:
                raise PlatformConfigError(
                    "Discord rejected the bot token", hint="reset the token and set it again"
                ) from err
            application_id = self.settings.application_id or str((await self._http.application_info())["id"])
            self.rest = DiscordRest(self._http, application_id=application_id)
            return
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.guild_reactions = True
        # Privileged: without it Discord sends no text for thread replies that do not mention the bot.
        intents.message_content = self.settings.message_content_intent
        client = discord.Client(intents=intents, guild_ready_timeout=self.guild_ready_timeout_s)
        client.event(self.on_interaction)
        client.event(self.on_message)
        client.event(self.on_raw_reaction_add)
        self.client = client
        try:
            await client.login(self._token())
        except discord.LoginFailure as err:
            raise PlatformConfigError(
                "Discord rejected the bot token", hint="reset the token and set it again"
            ) from err
        _shards, gateway_url, _limits = await client.http.get_bot_gateway()
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
        application_id = self.settings.application_id or str(client.application_id)
        self.rest = DiscordRest(client.http, application_id=application_id)
        self._gateway_task = asyncio.create_task(client.connect(reconnect=True), name="discord-gateway")
        ready = asyncio.create_task(client.wait_until_ready())
        done, _pending = await asyncio.wait(
            {ready, self._gateway_task}, timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            if self._gateway_task in done:
                self._gateway_task.result()  # raises the gateway's error
            raise DeliveryError("the Discord gateway did not become ready within 60 s")
        log.info("discord connected", user=str(client.user), application=application_id)

    async def _serve(self) -> None:
        if self._gateway_task is None:
            await super()._serve()
            return
        await self._gateway_task  # discord.py resumes by itself; if it gives up, the base reconnects

    async def _disconnect(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()
        if self._gateway_task is not None:
            task, self._gateway_task = self._gateway_task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def conversation(self, place: Place, sender: Sender | None = None) -> Conversation:
        """A channel or thread to post into with the bot token (alerts, task threads)."""
        if self.rest is None:
            raise DeliveryError("Discord is not connected")
        return DiscordChannelConversation(self.rest, place, sender)

    # -- interactions: one path for the gateway and the HTTP endpoint ------------------------------
    def _interaction_event(
        self, interaction: InteractionPayload
    ) -> tuple[IncomingCommand | ButtonPress, Conversation] | None:
        assert self.rest is not None
        user = (interaction.get("member") or {}).get("user") or interaction.get("user") or {}
        sender = Sender(
            platform=PLATFORM,
            user_id=str(user.get("id")),
            display_name=user.get("global_name") or user.get("username"),
            team_id=interaction.get("guild_id"),
            locale=interaction.get("locale"),
        )
        place = Place(PLATFORM, str(interaction.get("channel_id") or (interaction.get("channel") or {}).get("id")))
        conversation = DiscordInteractionConversation(self.rest, place, token=str(interaction["token"]), sender=sender)
        data = interaction.get("data") or {}
        if interaction.get("type") == APPLICATION_COMMAND:
            name, text = interaction_command_line(data, self.registry)
            command = IncomingCommand(sender=sender, place=place, name=name, text=text, event_id=interaction.get("id"))
            return command, conversation
        if interaction.get("type") == MESSAGE_COMPONENT:
            message = interaction.get("message") or {}
            action_id, _, value = str(data.get("custom_id", "")).partition(CUSTOM_ID_SEPARATOR)
            press = ButtonPress(
                sender=sender,
                place=place,
                message_id=str(message.get("id", "")),
                action_id=action_id,
                value=value or ",".join(str(v) for v in data.get("values", [])),
                event_id=interaction.get("id"),
            )
            return press, conversation
        return None

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Gateway INTERACTION_CREATE: defer within 3 s, then handle in the background."""
        assert self.rest is not None
        raw: InteractionPayload = {
            "id": str(interaction.id),
            "application_id": str(interaction.application_id),
            "type": interaction.type.value,
            "data": dict(interaction.data or {}),
            "channel_id": str(interaction.channel_id),
            "token": interaction.token,
            "locale": str(interaction.locale),
            "user": {"id": str(interaction.user.id), "username": interaction.user.name},
        }
        if interaction.guild_id:
            raw["guild_id"] = str(interaction.guild_id)
        if interaction.message is not None:
            raw["message"] = {"id": str(interaction.message.id)}
        translated = self._interaction_event(raw)
        if translated is None:
            return
        callback = DEFERRED_CHANNEL_MESSAGE if raw["type"] == APPLICATION_COMMAND else DEFERRED_UPDATE_MESSAGE
        await self.rest.interaction_callback(raw["id"], raw["token"], {"type": callback})
        self.dispatch(*translated)

    async def handle_http(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """The HTTP interactions endpoint: verify, answer PING, defer commands and handle them after."""
        if not self.settings.public_key:
            return 503, {"Content-Type": "text/plain"}, b"interactions endpoint not configured"
        try:
            verify_signature(public_key_hex=self.settings.public_key, body=body, headers=headers)
        except SignatureError as err:  # expected: Discord itself probes with bad signatures
            log.info("discord interaction refused", reason=str(err))
            return 401, {"Content-Type": "text/plain"}, b"invalid request signature"
        try:
            interaction: InteractionPayload = json.loads(body)
        except ValueError:
            return 400, {"Content-Type": "text/plain"}, b"body is not JSON"
        if interaction.get("type") == PING:
            return 200, {"Content-Type": "application/json"}, json.dumps({"type": PONG}).encode()
        if self.rest is None:
            return 503, {"Content-Type": "text/plain"}, b"not connected"
        translated = self._interaction_event(interaction)
        if translated is None:
            return 400, {"Content-Type": "text/plain"}, b"unsupported interaction type"
        callback = (
            DEFERRED_CHANNEL_MESSAGE if interaction.get("type") == APPLICATION_COMMAND else DEFERRED_UPDATE_MESSAGE
        )
        self.dispatch(*translated)
        return 200, {"Content-Type": "application/json"}, json.dumps({"type": callback}).encode()

    # -- gateway messages and reactions ------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        """A mention or DM becomes an IncomingMessage (or a command when it starts with "/"); any other
        message with text is an unaddressed one, which only a task's thread takes (the dispatcher asks)."""
        discord = load_discord()

        client = self.client
        if client is None or client.user is None or message.author.bot:
            return
        is_dm = isinstance(message.channel, discord.DMChannel)
        addressed = is_dm or client.user in message.mentions
        if not addressed and not message.content.strip():
            return  # without the message content intent Discord sends other messages without text
        assert self.rest is not None
        text = message.content.replace(f"<@{client.user.id}>", "").replace(f"<@!{client.user.id}>", "").strip()
        sender = Sender(
            PLATFORM,
            str(message.author.id),
            display_name=message.author.display_name,
            team_id=str(message.guild.id) if message.guild else None,
        )
        place = Place(PLATFORM, str(message.channel.id))
        conversation = DiscordChannelConversation(self.rest, place, sender)
        if addressed and text.startswith("/"):
            name, _, rest = text[1:].partition(" ")
            self.dispatch(IncomingCommand(sender=sender, place=place, name=name, text=rest.strip()), conversation)
            return
        incoming = IncomingMessage(
            sender=sender, place=place, text=text, message_id=str(message.id), addressed=addressed
        )
        self.dispatch(incoming, conversation)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """A reaction on a message becomes ReactionAdded (ratings)."""
        client = self.client
        if client is None or client.user is None or payload.user_id == client.user.id or self.rest is None:
            return
        sender = Sender(PLATFORM, str(payload.user_id), team_id=str(payload.guild_id) if payload.guild_id else None)
        place = Place(PLATFORM, str(payload.channel_id))
        reaction = ReactionAdded(
            sender=sender, place=place, message_id=str(payload.message_id), emoji=str(payload.emoji)
        )
        self.dispatch(reaction, DiscordChannelConversation(self.rest, place, sender))


async def sync_commands(
    *, settings: DiscordSettings, registry: CommandRegistry, guild_id: str | None = None
) -> list[dict[str, Any]]:
    """Overwrite the application's slash commands (in one guild — instant — or globally)."""
    discord = load_discord()
    from discord.http import HTTPClient, Route

    if settings.bot_token is None:
        raise PlatformConfigError("Discord needs a bot token", hint="set ORCH_DISCORD__BOT_TOKEN")
    Route.BASE = settings.api_base_url.rstrip("/")
    http = HTTPClient(asyncio.get_running_loop())
    try:
        try:
            await http.static_login(settings.bot_token.get_secret_value())
        except discord.LoginFailure as err:
            raise PlatformConfigError(
                "Discord rejected the bot token", hint="reset the token and set it again"
            ) from err
        application_id = settings.application_id or str((await http.application_info())["id"])
        payload: list[Any] = list(command_payloads(registry))
        try:
            if guild_id:
                result = await http.bulk_upsert_guild_commands(application_id, guild_id, payload)
            else:
                result = await http.bulk_upsert_global_commands(application_id, payload)
        except discord.HTTPException as err:
            raise DeliveryError(f"Discord refused the commands: {err.text or err.status}", code=str(err.code)) from err
        return [dict(command) for command in result]
    finally:
        await http.close()
