"""The console: the same commands in a terminal, with no token — and the harness for end-to-end tests.

Lines starting with "/" are commands, anything else is a plain message, exactly as a person
would type them in Slack or Discord. The terminal has no threads to reply in or buttons to press,
so two lines stand for them: `reply <task> <text>` continues a task's thread, and a card's buttons
are printed as numbered choices that `choose <number>` presses. A streamed answer is printed as it grows (an edit that
extends the current message prints only the new text). Files go to a directory on disk.
Tests drive it with `await console.submit("/help")`, which returns the final text of every message
the command produced.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bot.platforms.base import EventSink, Platform
from bot.platforms.events import (
    ButtonPress,
    Card,
    CardAction,
    Conversation,
    IncomingCommand,
    IncomingMessage,
    MessageHandle,
    Place,
    Sender,
    StreamLimits,
)
from bot.platforms.i18n import translate

PLATFORM = "console"
CONSOLE_LIMITS = StreamLimits(max_chars=100_000, min_edit_interval_s=0.05, max_messages=1)
QUIT_WORDS = frozenset({"/quit", "/exit"})
_REPLY = re.compile(r"^reply\s+#?(\d{1,12})\s+(.+)$", re.IGNORECASE | re.DOTALL)
_CHOOSE = re.compile(r"^choose\s+#?(\d{1,9})$", re.IGNORECASE)


@dataclass(frozen=True)
class ConsoleChoice:
    """A button printed as a numbered choice: which message it is on and what pressing it sends."""

    message_id: str
    place: Place
    action: CardAction


@dataclass
class ConsoleMessage:
    """One message printed to the terminal, with its edit history (for tests)."""

    message_id: str
    text: str
    thread_id: str | None
    versions: list[str] = field(default_factory=list)
    card: Card | None = None


class _Screen:
    """Prints messages; keeps the last one "open" so a growing stream prints only what is new."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._open_id: str | None = None
        self._open_text = ""

    def show_new(self, message: ConsoleMessage) -> None:
        self.close_line()
        prefix = f"[thread {message.thread_id}] " if message.thread_id else ""
        self._write(prefix + message.text)
        self._open_id, self._open_text = message.message_id, message.text

    def show_edit(self, message: ConsoleMessage) -> None:
        if message.message_id == self._open_id and message.text.startswith(self._open_text):
            self._write(message.text[len(self._open_text) :])
        else:
            self.close_line()
            self._write(f"(edited) {message.text}")
        self._open_id, self._open_text = message.message_id, message.text

    def close_line(self) -> None:
        if self._open_id is not None:
            self._write("\n")
            self._open_id, self._open_text = None, ""


class ConsoleHandle(MessageHandle):
    """A printed message; editing reprints (or extends) it."""

    def __init__(self, console: ConsolePlatform, message: ConsoleMessage) -> None:
        self._console = console
        self._message = message
        self.message_id = message.message_id

    async def edit(self, text: str, *, card: Card | None = None) -> None:
        """Change the message's text on screen (a new card's choices replace the old ones)."""
        if card is not None:
            self._message.card = card
            self._console.forget_choices(self._message.message_id)
            text = self._console.with_choices(text, card, self._message.message_id, self._message.thread_id)
        self._message.text = text
        self._message.versions.append(text)
        self._console.screen.show_edit(self._message)


class ConsoleConversation(Conversation):
    """The terminal, optionally inside a named thread."""

    def __init__(self, console: ConsolePlatform, place: Place, sender: Sender | None = None) -> None:
        self._console = console
        self.place = place
        self.limits = CONSOLE_LIMITS
        self.sender = sender

    async def say(self, text: str, *, card: Card | None = None) -> MessageHandle:
        """Print a new message (a card's buttons as numbered choices)."""
        message = self._console.record(text, thread_id=self.place.thread_id, card=card)
        if card is not None and card.actions:
            message.text = self._console.with_choices(text, card, message.message_id, self.place.thread_id)
            message.versions[-1] = message.text
        self._console.screen.show_new(message)
        return ConsoleHandle(self._console, message)

    async def upload(self, *, filename: str, content: bytes, comment: str = "") -> None:
        """Save the file under the console's file directory and print where."""
        safe_name = Path(filename).name or "output.txt"
        directory = self._console.files_dir
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{next(self._console.ids)}-{safe_name}"
        target.write_bytes(content)
        self._console.files.append(target)
        await self.say(translate("console.attached", self._console.language, filename=safe_name, path=target))

    async def open_thread(self, *, title: str, anchor: MessageHandle) -> Conversation:
        """A thread is shown as a prefix on each of its lines."""
        place = Place(platform=PLATFORM, channel_id=self.place.channel_id, thread_id=anchor.message_id)
        return ConsoleConversation(self._console, place, self.sender)

    def at(self, place: Place) -> Conversation:
        """The terminal, shown as in another thread."""
        return ConsoleConversation(self._console, place, self.sender)

    def message(self, message_id: str) -> MessageHandle:
        """A printed message by its id."""
        for message in self._console.messages:
            if message.message_id == message_id:
                return ConsoleHandle(self._console, message)
        message = ConsoleMessage(message_id=message_id, text="", thread_id=self.place.thread_id)
        return ConsoleHandle(self._console, message)


class ConsolePlatform(Platform):
    """A REPL on a text stream; also driven directly by tests through `submit`."""

    name = PLATFORM

    def __init__(
        self,
        *,
        sink: EventSink,
        user_id: str,
        display_name: str | None = None,
        output: TextIO | None = None,
        files_dir: Path,
        language: str = "en",
    ) -> None:
        super().__init__(sink=sink)
        self.sender = Sender(platform=PLATFORM, user_id=user_id, display_name=display_name)
        self.place = Place(platform=PLATFORM, channel_id="terminal")
        self.files_dir = files_dir
        self.language = language
        self.messages: list[ConsoleMessage] = []
        self.files: list[Path] = []
        self.ids = itertools.count(1)
        self.choices: dict[int, ConsoleChoice] = {}
        self._choice_ids = itertools.count(1)
        stream = output
        self.screen = _Screen(self._writer(stream) if stream is not None else (lambda _text: None))

    @staticmethod
    def _writer(stream: TextIO) -> Callable[[str], None]:
        def write(text: str) -> None:
            stream.write(text)
            stream.flush()

        return write

    async def _connect(self) -> None:
        """Nothing to connect: the terminal is always there."""

    async def _disconnect(self) -> None:
        """Nothing to close."""

    def conversation(self, place: Place, sender: Sender | None = None) -> Conversation:
        """The terminal (alerts print here too)."""
        return ConsoleConversation(self, place, sender or self.sender)

    def with_choices(self, text: str, card: Card, message_id: str, thread_id: str | None) -> str:
        """`text` followed by the card's buttons as numbered choices, which `choose <n>` presses."""
        if not card.actions:
            return text
        place = Place(platform=PLATFORM, channel_id=self.place.channel_id, thread_id=thread_id)
        lines = [text]
        for action in card.actions:
            number = next(self._choice_ids)
            self.choices[number] = ConsoleChoice(message_id=message_id, place=place, action=action)
            lines.append(f"  [{number}] {action.label}")
        lines.append(translate("console.choose_hint", self.language))
        return "\n".join(lines)

    def forget_choices(self, message_id: str) -> None:
        """A card was replaced: its old numbered choices no longer exist."""
        for number in [n for n, choice in self.choices.items() if choice.message_id == message_id]:
            del self.choices[number]

    def record(self, text: str, *, thread_id: str | None, card: Card | None) -> ConsoleMessage:
        """Remember a printed message (tests read `messages`)."""
        message = ConsoleMessage(message_id=str(next(self.ids)), text=text, thread_id=thread_id, card=card)
        message.versions.append(text)
        self.messages.append(message)
        return message

    def event_for(self, line: str) -> IncomingCommand | IncomingMessage | ButtonPress | None:
        """The neutral event a typed line stands for (None: `choose` with no such open choice)."""
        stripped = line.strip()
        if stripped.startswith("/"):
            name, _, text = stripped[1:].partition(" ")
            return IncomingCommand(sender=self.sender, place=self.place, name=name, text=text.strip())
        if chosen := _CHOOSE.match(stripped):
            choice = self.choices.get(int(chosen.group(1)))
            if choice is None:
                return None
            return ButtonPress(sender=self.sender, place=choice.place, message_id=choice.message_id,
                               action_id=choice.action.action_id, value=choice.action.value)
        message_id = str(next(self.ids))
        if reply := _REPLY.match(stripped):
            return IncomingMessage(sender=self.sender, place=self.place, text=reply.group(2).strip(),
                                   message_id=message_id, task_id=int(reply.group(1)))
        return IncomingMessage(sender=self.sender, place=self.place, text=stripped, message_id=message_id)

    async def submit(self, line: str) -> list[str]:
        """Handle one typed line to completion; the final texts of the messages it produced."""
        before = len(self.messages)
        event = self.event_for(line)
        conversation = ConsoleConversation(self, event.place if event is not None else self.place, self.sender)
        if event is None:
            await conversation.say(translate("console.no_choice", self.language, line=line.strip()))
        else:
            await self.dispatch(event, conversation)
        self.screen.close_line()
        return [message.text for message in self.messages[before:]]

    async def repl(self, stream: TextIO | None = None, *, prompt: str = "> ") -> None:
        """Read lines until EOF or /quit, handling each as it comes."""
        source = stream or sys.stdin
        lines = _line_reader(source)
        while True:
            self.screen.close_line()
            self.screen._write(prompt)
            line = await lines.get()
            if not line:
                self.screen._write("\n")
                return
            if not line.strip():
                continue
            if line.strip().lower() in QUIT_WORDS:
                return
            await self.submit(line)


def _line_reader(source: TextIO) -> asyncio.Queue[str]:
    """Lines of `source` from a daemon thread ("" at EOF).

    Not the loop's default executor: a thread blocked in readline() there would keep
    asyncio.run() from returning when the daemon is asked to stop.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        while True:
            line = source.readline()
            try:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            except RuntimeError:  # the loop is closed: the daemon has stopped
                return
            if not line:
                return

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()
    return queue
