"""The one error boundary between chat and the commands: resolve, authorise, parse, run, audit.

Every incoming event from every platform passes through `CommandDispatcher.handle_event`:
a command is matched and its arguments validated (a wrong argument gets a short usage message),
the person's role is checked against the command's, the handler runs, and one audit row records
how it ended. Expected failures (`OrchestratorError`: usage, permission, not found, a provider
that is down) become a short translated message with no traceback; anything else is a bug and
is logged with its traceback under a short reference the person can quote.

Plain messages, reactions and button presses are handed to hooks the engine installs
(`on_message`, `on_reaction`, `on_button`); until it does, a plain message is answered with the
pointer to /help.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.commands.errors import CommandError, PermissionDeniedError, UsageError
from bot.commands.permissions import PermissionPolicy, audit_row, may_enter, resolve_principal
from bot.commands.registry import CommandContext, CommandRegistry, Principal, role_allows
from bot.db.models import AuditOutcome
from bot.errors import OrchestratorError
from bot.logs import get_logger
from bot.platforms.errors import PlatformError
from bot.platforms.events import (
    ButtonPress,
    Card,
    Conversation,
    IncomingCommand,
    IncomingEvent,
    IncomingMessage,
    ReactionAdded,
)
from bot.platforms.i18n import translate

log = get_logger("bot.commands")

MessageHook = Callable[[IncomingMessage, Conversation, Principal], Awaitable[None]]
ReactionHook = Callable[[ReactionAdded, Conversation, Principal], Awaitable[None]]
ButtonHook = Callable[[ButtonPress, Conversation, Principal], Awaitable[None]]
MessageFilter = Callable[[IncomingMessage], Awaitable[bool]]


@dataclass
class Services:
    """What command handlers reach: the database, the settings, and components added by the app."""

    session_factory: async_sessionmaker[AsyncSession]
    settings: Any = None
    started_at: float = field(default_factory=time.monotonic)
    # Filled by the composition root: "providers" (a ProviderFactory), "engine", "bus", …
    components: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """How one event ended, for tests and metrics."""

    outcome: AuditOutcome
    command: str | None = None
    reference: str | None = None


class CommandDispatcher:
    """Routes neutral events to commands and hooks behind one error boundary."""

    def __init__(
        self,
        *,
        registry: CommandRegistry,
        services: Services,
        policy: PermissionPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.services = services
        self.policy = policy or PermissionPolicy()
        self.on_message: MessageHook | None = None
        self.on_reaction: ReactionHook | None = None
        self.on_button: ButtonHook | None = None
        # Whether an unaddressed message (a thread reply not naming the bot) is for us: a task's thread.
        self.accepts_message: MessageFilter | None = None

    async def handle_event(self, event: IncomingEvent, conversation: Conversation) -> DispatchResult:
        """Handle any incoming event; never raises (the boundary is here)."""
        if isinstance(event, IncomingCommand):
            return await self.handle_command(event, conversation)
        if isinstance(event, IncomingMessage) and not event.addressed and not await self._ours(event):
            return DispatchResult(outcome=AuditOutcome.SUCCESS)  # someone else's conversation: not ours
        principal = await self._principal(event.sender)
        if not may_enter(principal, self.policy):
            if isinstance(event, IncomingMessage):
                await self._say(conversation, translate("denied.unknown", principal.language))
            elif isinstance(event, ButtonPress):
                await self._say_private(conversation, translate("denied.unknown", principal.language))
            return DispatchResult(outcome=AuditOutcome.DENIED)
        reference = uuid.uuid4().hex[:8]
        try:
            if isinstance(event, IncomingMessage):
                if self.on_message is None:
                    await self._say(conversation, translate("message.use_commands", principal.language))
                else:
                    await self.on_message(event, conversation, principal)
            elif isinstance(event, ReactionAdded) and self.on_reaction is not None:
                await self.on_reaction(event, conversation, principal)
            elif isinstance(event, ButtonPress) and self.on_button is not None:
                await self.on_button(event, conversation, principal)
        except OrchestratorError as err:  # expected: tell the person, no traceback
            await self._say(conversation, _expected_text(err, principal.language))
            return DispatchResult(outcome=AuditOutcome.FAILED, reference=reference)
        except Exception:  # the boundary: a bug must not kill the connector; logged with traceback
            log.exception("chat event failed", reference=reference, kind=type(event).__name__)
            await self._say(conversation, translate("error.unexpected", principal.language, reference=reference))
            return DispatchResult(outcome=AuditOutcome.FAILED, reference=reference)
        return DispatchResult(outcome=AuditOutcome.SUCCESS)

    async def handle_command(self, command: IncomingCommand, conversation: Conversation) -> DispatchResult:
        """Run one command end to end and audit it; never raises."""
        reference = uuid.uuid4().hex[:8]
        started = time.monotonic()
        principal = await self._principal(command.sender)
        language = principal.language
        action = f"command.{command.name.lower()[:60]}"
        detail: dict[str, Any] = {"reference": reference}
        outcome = AuditOutcome.FAILED
        try:
            if not may_enter(principal, self.policy):
                raise PermissionDeniedError("denied.unknown")
            parsed = self.registry.parse(command.name, command.text)
            spec = parsed.spec
            action = f"command.{spec.name.replace(' ', '.')}"
            detail["args"] = parsed.args if spec.audit_args else "(not recorded)"
            if not role_allows(principal.role, spec.role):
                raise PermissionDeniedError("denied.role", command=spec.name, role=str(spec.role))
            context = CommandContext(
                sender=command.sender,
                place=command.place,
                principal=principal,
                args=parsed.args,
                conversation=conversation,
                services=self.services,
                spec=spec,
            )
            reply = await spec.handler(context)
            if isinstance(reply, Card):
                await conversation.say(reply.as_text(), card=reply)
            elif reply:
                await conversation.say(reply)
            outcome = AuditOutcome.SUCCESS
        except PermissionDeniedError as err:  # expected: refused, audited as denied
            outcome = AuditOutcome.DENIED
            log.info("command denied", action=action, platform=command.sender.platform, user=command.sender.user_id)
            await self._say(conversation, translate(err.key, language, **err.params))
        except CommandError as err:  # expected: usage, not found…
            detail["error"] = err.key
            await self._say(conversation, _command_error_text(err, language))
        except OrchestratorError as err:  # expected from other packages (provider down…): short message
            detail["error"] = type(err).__name__
            log.info("command failed", action=action, error=str(err.message))
            await self._say(conversation, _expected_text(err, language))
        except Exception:  # the one boundary: unexpected means a bug; traceback logged, reference shown
            detail["error"] = "unexpected"
            log.exception("command crashed", action=action, reference=reference)
            await self._say(conversation, translate("error.unexpected", language, reference=reference))
        detail["duration_ms"] = int((time.monotonic() - started) * 1000)
        await self._audit(principal, command, action=action, outcome=outcome, detail=detail)
        return DispatchResult(outcome=outcome, command=action, reference=reference)

    async def _ours(self, message: IncomingMessage) -> bool:
        return self.accepts_message is not None and await self.accepts_message(message)

    async def _principal(self, sender: Any) -> Principal:
        async with self.services.session_factory() as session:
            principal = await resolve_principal(session, sender, policy=self.policy)
            await session.commit()
        return principal

    async def _audit(
        self,
        principal: Principal,
        command: IncomingCommand,
        *,
        action: str,
        outcome: AuditOutcome,
        detail: dict[str, Any],
    ) -> None:
        row = audit_row(
            principal=principal,
            sender=command.sender,
            place=command.place,
            action=action,
            outcome=outcome,
            detail=detail,
        )
        async with self.services.session_factory() as session:
            session.add(row)
            await session.commit()

    async def _say(self, conversation: Conversation, text: str) -> None:
        try:
            await conversation.say(text)
        except PlatformError as err:  # expected: the platform refused; nothing more we can tell anyone
            log.warning("could not deliver a reply", error=str(err))

    async def _say_private(self, conversation: Conversation, text: str) -> None:
        try:
            await conversation.say_private(text)
        except PlatformError as err:  # expected: the platform refused; nothing more we can tell anyone
            log.warning("could not deliver a private reply", error=str(err))


def _command_error_text(err: CommandError, language: str) -> str:
    text = translate(err.key, language, **err.params)
    usage = err.usage if isinstance(err, UsageError) else None
    if usage:
        text += "\n" + translate("usage.line", language, usage=usage)
    return text


def _expected_text(err: OrchestratorError, language: str) -> str:
    if isinstance(err, CommandError):
        return _command_error_text(err, language)
    return translate("error.expected", language, message=err.message)
