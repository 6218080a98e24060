"""Credentials for external services, the templates their forms follow, OAuth2 flows in flight,
and accounts whose credits we track.

Secrets are stored only as vault envelopes (`secret_blob`, `code_verifier_blob`), listed in
`__secret_columns__` so key rotation finds them.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db.base import Base, TimestampMixin, utcnow
from bot.db.models._columns import (
    Key,
    Money,
    SecretBlob,
    ShortKey,
    enum_column,
    foreign_key,
    primary_key,
)
from bot.db.models.enums import AuthType, CredentialStatus

if TYPE_CHECKING:
    from bot.db.models.users import User


class CredentialTemplate(TimestampMixin, Base):
    """What a service needs: the form's JSON Schema and, for OAuth2, the provider's endpoints."""

    __tablename__ = "credential_templates"

    id: Mapped[int] = primary_key()
    service: Mapped[str] = mapped_column(ShortKey, unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    auth_type: Mapped[AuthType] = enum_column(AuthType)
    description: Mapped[str] = mapped_column(Text, default="")
    # JSON Schema of the fields a person fills in (client id/secret, API key…).
    fields_schema: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # {authorize_url, token_url, revoke_url, scopes, issuer, pkce, extra_authorize_params}; null if not OAuth2.
    oauth: Mapped[dict[str, Any] | None]
    docs_url: Mapped[str | None] = mapped_column(String(500))


class Credential(TimestampMixin, Base):
    """A person's sealed secret for one service (token set, API key…)."""

    __tablename__ = "credentials"
    __secret_columns__: ClassVar[tuple[str, ...]] = ("secret_blob",)
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        Index(None, "service", "status"),
        Index(None, "status", "expires_at"),
    )

    id: Mapped[int] = primary_key()
    user_id: Mapped[int] = foreign_key("users.id", ondelete="CASCADE")
    template_id: Mapped[int | None] = foreign_key(
        "credential_templates.id", ondelete="SET NULL", nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    service: Mapped[str] = mapped_column(ShortKey)
    secret_blob: Mapped[bytes] = mapped_column(SecretBlob)
    status: Mapped[CredentialStatus] = enum_column(CredentialStatus, default=CredentialStatus.PENDING)
    status_detail: Mapped[str | None] = mapped_column(String(500))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    expires_at: Mapped[datetime | None]
    last_validated_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    user: Mapped[User] = relationship(back_populates="credentials", lazy="raise")
    template: Mapped[CredentialTemplate | None] = relationship(lazy="raise")


class OAuthState(Base):
    """An OAuth2 authorisation in flight: one-time state (hashed) and the sealed PKCE verifier."""

    __tablename__ = "oauth_states"
    __secret_columns__: ClassVar[tuple[str, ...]] = ("code_verifier_blob",)

    id: Mapped[int] = primary_key()
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = foreign_key("users.id", ondelete="CASCADE", index=True)
    service: Mapped[str] = mapped_column(ShortKey)
    # Set when the flow re-authorises an existing credential instead of creating one.
    credential_id: Mapped[int | None] = foreign_key("credentials.id", ondelete="CASCADE", nullable=True, index=True)
    code_verifier_blob: Mapped[bytes] = mapped_column(SecretBlob)
    redirect_uri: Mapped[str] = mapped_column(String(1000))
    issuer: Mapped[str | None] = mapped_column(String(500))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    consumed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExternalApiAccount(TimestampMixin, Base):
    """An account at a paid API whose remaining credits are synchronised and spent by tasks."""

    __tablename__ = "external_api_accounts"
    __table_args__ = (UniqueConstraint("user_id", "service", "account_name"),)

    id: Mapped[int] = primary_key()
    user_id: Mapped[int] = foreign_key("users.id", ondelete="CASCADE")
    service: Mapped[str] = mapped_column(ShortKey)
    account_name: Mapped[str] = mapped_column(Key)
    credential_id: Mapped[int | None] = foreign_key("credentials.id", ondelete="SET NULL", nullable=True, index=True)
    credits_remaining: Mapped[Decimal | None] = mapped_column(Money)
    credits_unit: Mapped[str | None] = mapped_column(String(32))
    last_synced_at: Mapped[datetime | None]
    sync_error: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)

    credential: Mapped[Credential | None] = relationship(lazy="raise")
