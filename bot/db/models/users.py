"""People, how each chat platform's account maps to them, and their API tokens.

A person is found by (platform, platform user id), never by display name: names change and are
not unique, ids are stable.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Index, String, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db.base import Base, TimestampMixin, utcnow
from bot.db.models._columns import Key, ShortKey, enum_column, foreign_key, primary_key
from bot.db.models.enums import Language, UserRole

if TYPE_CHECKING:
    from bot.db.models.credentials import Credential


class User(TimestampMixin, Base):
    """A person who may talk to the orchestrator or administer it."""

    __tablename__ = "users"

    id: Mapped[int] = primary_key()
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(Key, default="")
    email: Mapped[str | None] = mapped_column(Key)
    role: Mapped[UserRole] = enum_column(UserRole, default=UserRole.VIEWER)
    language: Mapped[Language] = enum_column(Language, default=Language.EN)
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())
    last_seen_at: Mapped[datetime | None]

    identities: Mapped[list[UserIdentity]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )
    api_tokens: Mapped[list[ApiToken]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )
    credentials: Mapped[list[Credential]] = relationship(back_populates="user", passive_deletes=True, lazy="raise")

    def __repr__(self) -> str:
        return f"<User id={self.id} username={self.username!r} role={self.role}>"


class UserIdentity(TimestampMixin, Base):
    """One chat account (Slack, Discord, console…) belonging to a user."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id"),)

    id: Mapped[int] = primary_key()
    user_id: Mapped[int] = foreign_key("users.id", ondelete="CASCADE", index=True)
    platform: Mapped[str] = mapped_column(ShortKey)
    platform_user_id: Mapped[str] = mapped_column(Key)
    # Shown in lists only; never used to find anyone.
    platform_display_name: Mapped[str | None] = mapped_column(Key)

    user: Mapped[User] = relationship(back_populates="identities", lazy="joined")


class ApiToken(Base):
    """A bearer token for the admin API; only its SHA-256 is stored, the prefix helps find it."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index(None, "user_id", "revoked_at"),)

    id: Mapped[int] = primary_key()
    user_id: Mapped[int] = foreign_key("users.id", ondelete="CASCADE")
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(back_populates="api_tokens", lazy="raise")
