"""/connect <service>: link an external account (GitHub, Google…) to your user from chat.

For an OAuth2 service the command stores a flow for the person's own credential that holds the
service's OAuth client (bot/oauth_flow.py) and sends them — privately: ephemeral on Slack and
Discord — a link to the admin API's `/oauth/<service>/authorize?state=…`. The state is one-time,
bound to the chat user (their platform id → their users row) and expires after ten minutes.
When the provider sends the browser back, the admin API publishes the outcome on the event bus;
this module, listening for that flow, tells the person in the chat they used.

For a service whose credential is an API key, the command explains how to store it through the
admin API. A secret is never accepted in chat: a line that looks like one is refused without
being repeated, and /connect's arguments are not written to the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from sqlalchemy import select

from bot.commands.errors import CommandError, NotFoundError, UsageError
from bot.commands.registry import CommandContext, CommandRegistry, Param, Reply
from bot.db.base import utcnow
from bot.db.models import AuthType, CredentialTemplate, UserRole
from bot.logs import get_logger, redact_text
from bot.oauth_flow import (
    DEFAULT_TTL_S,
    CredentialNotUsable,
    authorize_link,
    public_base_url,
    redirect_uri,
    start_for_user,
    user_oauth_credentials,
    withdraw_flow,
)
from bot.platforms.events import Conversation

log = get_logger(__name__)
SERVICE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# Prefixes of tokens people paste by mistake (GitHub, OpenAI/Anthropic, Slack, AWS, Google, GitLab, JWTs).
SECRET_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "github_pat_", "sk-", "xoxb-", "xoxp-", "xapp-", "xoxe",
                   "akia", "aiza", "ya29.", "glpat-", "eyj")
SECRET_ASSIGNMENT = re.compile(r"(?i)(pass(word)?|secret|token|api[_-]?key|key)\s*[=:]")
_watchers: set[asyncio.Task[None]] = set()


def register(registry: CommandRegistry) -> None:
    """Add /connect."""
    registry.add("connect", connect_command, role=UserRole.OPERATOR, audit_args=False, params=[
        Param("service", max_length=64),
        Param("credential", kind="text", required=False, max_length=200),
    ])


def looks_like_secret(text: str) -> bool:
    """Whether chat text seems to carry a key or token (refused, never echoed)."""
    if not text:
        return False
    if redact_text(text) != text or SECRET_ASSIGNMENT.search(text):
        return True
    for word in text.split():
        lowered = word.lower()
        if lowered.startswith(SECRET_PREFIXES) and len(word) >= 12:
            return True
        mixed = any(c.isdigit() for c in word) and any(c.isupper() for c in word) and any(c.islower() for c in word)
        if len(word) >= 20 and mixed:
            return True
        if len(word) >= 32 and any(c.isdigit() for c in word) and any(c.isalpha() for c in word):
            return True
    return False


async def connect_command(ctx: CommandContext) -> Reply:
    """Connect an external account (GitHub, Google…): you get a private link to authorise it.

    /connect <service> [credential name]. For API-key services it explains where to store the key;
    never paste a key or token in chat.
    """
    raw_service = str(ctx.args["service"])
    name = str(ctx.args["credential"] or "").strip() or None
    if looks_like_secret(raw_service) or (name is not None and looks_like_secret(name)):
        raise CommandError("connect.secret_refused")
    service = raw_service.strip().lower()
    if not SERVICE.match(service):
        error = UsageError("connect.bad_service")
        error.usage = ctx.spec.usage()
        raise error
    if ctx.principal.user_id is None:
        raise CommandError("connect.not_linked")
    settings = ctx.services.settings
    base = public_base_url(settings)
    async with ctx.services.session_factory() as session:
        template = (await session.execute(
            select(CredentialTemplate).where(CredentialTemplate.service == service))).scalar_one_or_none()
        if template is None:
            known = (await session.scalars(select(CredentialTemplate.service).order_by(CredentialTemplate.service)))
            raise NotFoundError("connect.unknown_service", service=service, services=", ".join(known.all()) or "-")
        if template.auth_type != AuthType.OAUTH2 or not template.oauth:
            return _api_key_help(ctx, template, base)
        vault = ctx.services.components.get("vault")
        if vault is None:
            raise CommandError("connect.no_vault")
        if not await user_oauth_credentials(session, user_id=ctx.principal.user_id, service=service):
            return ctx.t("connect.needs_client", service=service, base=base,
                         callback=redirect_uri(base, service))
        try:
            started = await start_for_user(session, vault=vault, service=service, user_id=ctx.principal.user_id,
                                           redirect=redirect_uri(base, service), credential_name=name,
                                           ttl_s=DEFAULT_TTL_S)
        except CredentialNotUsable as err:
            raise CommandError("connect.not_usable", service=service, reason=err.message) from None
    bus = ctx.services.components.get("bus")
    subscription = bus.subscribe(topics={"credential"}, maxsize=1000) if bus is not None else None
    minutes = max(1, round((started.expires_at - utcnow()).total_seconds() / 60))
    try:
        await ctx.conversation.say(ctx.t("connect.sent", service=template.display_name))
        await ctx.conversation.say_private(ctx.t("connect.link", service=template.display_name, minutes=minutes,
                                                 link=authorize_link(base, service, started.state)))
    except BaseException:
        if subscription is not None:
            subscription.close()
        async with ctx.services.session_factory() as session:
            await withdraw_flow(session, started.flow_id)  # a link nobody received must not stay usable
        raise
    if subscription is not None:
        watcher = asyncio.create_task(_tell_outcome(
            subscription=subscription, flow_id=started.flow_id, conversation=ctx.conversation, ctx=ctx,
            service=template.display_name, timeout_s=(started.expires_at - utcnow()).total_seconds() + 60),
            name=f"oauth-flow-{started.flow_id}")
        _watchers.add(watcher)
        watcher.add_done_callback(_watchers.discard)
    log.info("oauth flow started from chat", service=service, flow_id=started.flow_id,
             platform=ctx.place.platform, user_id=ctx.principal.user_id)
    return None  # both replies were posted above


def _api_key_help(ctx: CommandContext, template: CredentialTemplate, base: str) -> str:
    fields = ", ".join(sorted((template.fields_schema or {}).get("properties", {}))) or "api_key"
    text = ctx.t("connect.api_key", service=template.service, display=template.display_name, fields=fields,
                 base=base)
    if template.docs_url:
        text += "\n" + ctx.t("connect.docs", url=template.docs_url)
    return text


async def _tell_outcome(*, subscription: Any, flow_id: int, conversation: Conversation, ctx: CommandContext,
                        service: str, timeout_s: float) -> None:
    """Wait for the admin API's callback on this flow, then tell the person how it went."""
    try:
        async with asyncio.timeout(max(1.0, timeout_s)):
            async for event in subscription:
                if event.payload.get("flow_id") != flow_id:
                    continue
                if event.kind == "oauth_connected":
                    text = ctx.t("connect.done", service=service, credential=event.payload.get("credential_name"))
                else:
                    text = ctx.t("connect.failed", service=service, reason=event.payload.get("reason", "-"))
                await conversation.say(text)
                return
    except TimeoutError:
        log.info("oauth flow from chat was not completed in time", flow_id=flow_id)
    except Exception:  # boundary of a background task: the flow itself is unaffected; logged with traceback
        log.exception("could not tell the chat user how an OAuth flow ended", flow_id=flow_id)
    finally:
        with contextlib.suppress(Exception):
            subscription.close()
