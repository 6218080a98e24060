"""Who may run what: platform ids mapped to users and roles, unknown people denied, every command audited.

A person is found through `user_identities` by (platform, platform user id) — never by display
name. Unknown people are refused unless the policy grants them a role (for a private workspace
where everyone may read). Inactive users are treated as unknown. Every command, allowed or not,
leaves one `audit_log` row; arguments are redacted with the log redactor and cut short first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.commands.registry import Principal
from bot.db.base import utcnow
from bot.db.models import AuditLog, AuditOutcome, User, UserIdentity, UserRole
from bot.logs import redact_text
from bot.platforms.events import Place, Sender

MAX_AUDITED_ARGS = 500
LAST_SEEN_RESOLUTION = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class PermissionPolicy:
    """How strangers are treated; `unknown_user_role=None` (the default) denies them."""

    unknown_user_role: UserRole | None = None
    default_language: str = "en"


async def resolve_principal(session: AsyncSession, sender: Sender, *, policy: PermissionPolicy) -> Principal:
    """The user behind a platform id; unknown (known=False) with the policy's role, possibly none."""
    statement = (
        select(User)
        .join(UserIdentity, UserIdentity.user_id == User.id)
        .where(UserIdentity.platform == sender.platform, UserIdentity.platform_user_id == sender.user_id)
    )
    user = (await session.execute(statement)).scalars().first()
    if user is None or not user.is_active:
        role = policy.unknown_user_role or UserRole.VIEWER
        return Principal(
            user_id=None,
            username=sender.display_name or sender.user_id,
            role=role,
            language=policy.default_language,
            known=False,
        )
    now = utcnow()
    if user.last_seen_at is None or now - user.last_seen_at > LAST_SEEN_RESOLUTION:
        user.last_seen_at = now  # written at most every few minutes: a write per command would serialise SQLite
    return Principal(
        user_id=user.id,
        username=user.username,
        role=UserRole(user.role),
        language=str(user.language),
        known=True,
    )


def may_enter(principal: Principal, policy: PermissionPolicy) -> bool:
    """Whether the person may use the bot at all (known, or strangers are allowed)."""
    return principal.known or policy.unknown_user_role is not None


async def link_identity(session: AsyncSession, *, user_id: int, sender: Sender) -> UserIdentity:
    """Map a platform account to a user (idempotent); the caller's unit of work commits."""
    statement = select(UserIdentity).where(
        UserIdentity.platform == sender.platform, UserIdentity.platform_user_id == sender.user_id
    )
    identity = (await session.execute(statement)).scalars().first()
    if identity is None:
        identity = UserIdentity(
            user_id=user_id,
            platform=sender.platform,
            platform_user_id=sender.user_id,
            platform_display_name=sender.display_name,
        )
        session.add(identity)
    else:
        identity.user_id = user_id
        identity.platform_display_name = sender.display_name
    await session.flush()
    return identity


def audit_row(
    *,
    principal: Principal,
    sender: Sender,
    place: Place,
    action: str,
    outcome: AuditOutcome,
    detail: dict[str, Any],
) -> AuditLog:
    """The audit row for one command; secrets in arguments are masked before they are stored."""
    safe = {key: _safe(value) for key, value in detail.items()}
    safe.setdefault("platform_user_id", sender.user_id)
    return AuditLog(
        actor_user_id=principal.user_id,
        platform=sender.platform,
        action=action[:100],
        target=f"{place.channel_id}/{place.thread_id or ''}"[:255],
        detail=safe,
        outcome=outcome,
    )


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value[:MAX_AUDITED_ARGS])
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value][:50]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value)[:MAX_AUDITED_ARGS])
