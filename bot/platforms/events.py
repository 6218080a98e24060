"""The platform-neutral vocabulary: what people send us, and the surfaces we answer on.

Connectors translate Slack payloads and discord.py objects into these and back; nothing
platform-specific crosses this module, so the commands and the engine never learn which chat a
person used. Incoming events are frozen dataclasses; the outgoing side is two small abstract
classes (`MessageHandle`, `Conversation`) each platform implements.

A person is always identified by `(platform, user_id)` — the platform's stable id, never a
display name, which changes and is not unique.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime

from bot.db.base import utcnow


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent an event: the platform's id for them, plus hints that are never used for access."""

    platform: str
    user_id: str
    display_name: str | None = None
    team_id: str | None = None
    locale: str | None = None


@dataclass(frozen=True, slots=True)
class Place:
    """Where an event happened: a channel, and a thread inside it when there is one."""

    platform: str
    channel_id: str
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class IncomingCommand:
    """A slash command (or a console line starting with "/"): `name` without the slash, raw `text`."""

    sender: Sender
    place: Place
    name: str
    text: str = ""
    event_id: str | None = None
    received_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A plain message: a mention, a DM, or a reply in a thread.

    `addressed` is False for a thread reply that does not name the bot: only threads the bot
    follows (a task's thread) take those, every other channel message is none of our business.
    `task_id` is set where there are no threads to reply in (the console's `reply <task> <text>`).
    """

    sender: Sender
    place: Place
    text: str
    message_id: str
    event_id: str | None = None
    received_at: datetime = field(default_factory=utcnow)
    addressed: bool = True
    task_id: int | None = None


@dataclass(frozen=True, slots=True)
class ReactionAdded:
    """Someone reacted to one of our messages (ratings use 👍/👎)."""

    sender: Sender
    place: Place
    message_id: str
    emoji: str
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class ButtonPress:
    """Someone pressed a button on one of our messages; `action_id` says which, `value` carries data."""

    sender: Sender
    place: Place
    message_id: str
    action_id: str
    value: str = ""
    event_id: str | None = None


IncomingEvent = IncomingCommand | IncomingMessage | ReactionAdded | ButtonPress


@dataclass(frozen=True, slots=True)
class CardAction:
    """A button on a card: pressing it comes back as a ButtonPress with this `action_id` and `value`."""

    action_id: str
    label: str
    value: str = ""
    style: str | None = None  # "primary" or "danger"; None is the platform's default look


@dataclass(frozen=True, slots=True)
class Card:
    """A structured message (alerts, status, disputes): a Discord embed, Slack blocks, or console text."""

    title: str
    body: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    severity: str | None = None
    footer: str | None = None
    actions: tuple[CardAction, ...] = ()

    def as_text(self) -> str:
        """The card as plain text, for platforms without rich messages and for notifications."""
        lines = [f"*{self.title}*"]
        if self.body:
            lines.append(self.body)
        lines.extend(f"{name}: {value}" for name, value in self.fields)
        if self.footer:
            lines.append(self.footer)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """What a surface tolerates while a long answer streams into it.

    max_chars              the longest single message (Slack text ≈ 40k but 4k renders well; Discord 2,000)
    min_edit_interval_s    the fewest seconds between two edits of one message
    max_messages           how many messages one answer may span before the rest goes to a file
    native_append_interval_s / native_max_chars   the same for a native stream (Slack chat.*Stream)
    """

    max_chars: int
    min_edit_interval_s: float = 1.0
    max_messages: int = 5
    native_append_interval_s: float = 0.6
    native_max_chars: int = 36_000
    native_chunk_chars: int = 12_000


class MessageHandle(abc.ABC):
    """A message we posted and may still change."""

    message_id: str

    @abc.abstractmethod
    async def edit(self, text: str, *, card: Card | None = None) -> None:
        """Replace the message's text (and card, whose buttons go when it has none); raises
        RateLimitedError when the platform asks us to wait."""


class NativeStream(abc.ABC):
    """A platform's own streaming message (Slack chat.startStream…): append deltas, then stop."""

    message_id: str

    @abc.abstractmethod
    async def append(self, delta: str) -> None:
        """Add text to the end of the streaming message."""

    @abc.abstractmethod
    async def stop(self, delta: str = "") -> None:
        """Add the last text (may be empty) and close the stream."""


class Conversation(abc.ABC):
    """Where replies go: one channel or thread, on behalf of one person's request."""

    place: Place
    limits: StreamLimits
    #: The requester's platform ids, for platforms whose streams are addressed to a person.
    sender: Sender | None = None

    @abc.abstractmethod
    async def say(self, text: str, *, card: Card | None = None) -> MessageHandle:
        """Post a new message (with a card rendered natively when given) and return its handle."""

    @abc.abstractmethod
    async def upload(self, *, filename: str, content: bytes, comment: str = "") -> None:
        """Attach a file (used for output too long for messages)."""

    @abc.abstractmethod
    async def open_thread(self, *, title: str, anchor: MessageHandle) -> Conversation:
        """A conversation in a thread under `anchor` (a task's own thread)."""

    @abc.abstractmethod
    def at(self, place: Place) -> Conversation:
        """A conversation elsewhere on the same platform, for the same person (a task's thread)."""

    @abc.abstractmethod
    def message(self, message_id: str) -> MessageHandle:
        """A handle on a message already posted here (to update a card after a button press)."""

    async def say_private(self, text: str) -> None:
        """Tell only the sender (an ephemeral message); where the platform cannot, a normal one."""
        await self.say(text)

    async def start_native_stream(self, text: str) -> NativeStream | None:
        """Begin a native streaming message when the platform has one here; None means "use edits"."""
        return None
