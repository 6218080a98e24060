"""LLM servers, the models they offer, what discovery saw, and what each call cost."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Float, Index, String, Text, UniqueConstraint, false, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db.base import Base, TimestampMixin, utcnow
from bot.db.models._columns import Key, Money, enum_column, foreign_key, primary_key, sparse_index
from bot.db.models.enums import AiRole, DiscoveryEvent, HealthStatus, ProviderKind


class AiProvider(TimestampMixin, Base):
    """One LLM server (LM Studio, Ollama, any OpenAI-compatible endpoint) the engine may call."""

    __tablename__ = "ai_providers"
    __table_args__ = (Index(None, "is_enabled", "priority"),)

    id: Mapped[int] = primary_key()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[ProviderKind] = enum_column(ProviderKind)
    base_url: Mapped[str] = mapped_column(String(500))
    # The API token, if the server wants one, lives sealed in a credential.
    credential_id: Mapped[int | None] = foreign_key("credentials.id", ondelete="SET NULL", nullable=True, index=True)
    is_enabled: Mapped[bool] = mapped_column(default=True, server_default=true())
    is_local: Mapped[bool] = mapped_column(default=True, server_default=true())
    # Higher is tried first when several providers offer a suitable model.
    priority: Mapped[int] = mapped_column(default=0, server_default="0")
    max_concurrency: Mapped[int] = mapped_column(default=2, server_default="2")
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    health_status: Mapped[HealthStatus] = enum_column(HealthStatus, default=HealthStatus.UNKNOWN)
    health_detail: Mapped[str | None] = mapped_column(String(500))
    last_checked_at: Mapped[datetime | None]

    models: Mapped[list[AiModel]] = relationship(
        back_populates="provider", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )


class AiModel(TimestampMixin, Base):
    """A model a provider offers (downloaded or loaded); kept after it vanishes, for history."""

    __tablename__ = "ai_models"
    __table_args__ = (
        UniqueConstraint("provider_id", "model_key"),
        Index(None, "is_loaded", "vanished_at"),
    )

    id: Mapped[int] = primary_key()
    provider_id: Mapped[int] = foreign_key("ai_providers.id", ondelete="CASCADE")
    model_key: Mapped[str] = mapped_column(Key)
    display_name: Mapped[str] = mapped_column(Key, default="")
    family: Mapped[str | None] = mapped_column(String(100))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    quantization: Mapped[str | None] = mapped_column(String(64))
    context_length: Mapped[int | None]
    # e.g. {"type": "llm", "vision": false, "tool_use": true, "embedding": false}
    capabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Administrators can keep a model out of automatic selection.
    is_enabled: Mapped[bool] = mapped_column(default=True, server_default=true())
    is_loaded: Mapped[bool] = mapped_column(default=False, server_default=false())
    loaded_instance_id: Mapped[str | None] = mapped_column(Key)
    last_seen_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    vanished_at: Mapped[datetime | None]

    provider: Mapped[AiProvider] = relationship(back_populates="models", lazy="joined")

    def __repr__(self) -> str:
        return f"<AiModel id={self.id} provider_id={self.provider_id} key={self.model_key!r}>"


class ModelDiscovery(Base):
    """One thing a model-list refresh noticed (a model appeared, vanished, loaded…)."""

    __tablename__ = "model_discovery"
    __table_args__ = (Index(None, "provider_id", "at"), Index(None, "model_key", "at"))

    id: Mapped[int] = primary_key()
    provider_id: Mapped[int] = foreign_key("ai_providers.id", ondelete="CASCADE")
    model_id: Mapped[int | None] = foreign_key("ai_models.id", ondelete="SET NULL", nullable=True, index=True)
    model_key: Mapped[str] = mapped_column(Key)
    event: Mapped[DiscoveryEvent] = enum_column(DiscoveryEvent)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class CreditUsage(Base):
    """Tokens and money one model call consumed, for budgets and cost reports."""

    __tablename__ = "credit_usage"
    __table_args__ = (
        Index(None, "provider_id", "at"),
        sparse_index("account_id", "at"),
        Index(None, "model_id", "at"),
    )

    id: Mapped[int] = primary_key()
    provider_id: Mapped[int | None] = foreign_key("ai_providers.id", ondelete="SET NULL", nullable=True)
    model_id: Mapped[int | None] = foreign_key("ai_models.id", ondelete="SET NULL", nullable=True)
    account_id: Mapped[int | None] = foreign_key("external_api_accounts.id", ondelete="SET NULL", nullable=True)
    task_id: Mapped[int | None] = foreign_key("tasks.id", ondelete="SET NULL", nullable=True, index=True)
    subtask_id: Mapped[int | None] = foreign_key("subtasks.id", ondelete="SET NULL", nullable=True, index=True)
    prompt_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), server_default="0")
    currency: Mapped[str] = mapped_column(String(8), default="USD", server_default="USD")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class SpecializedAi(TimestampMixin, Base):
    """A role (planner, coder, reviewer…) with its system prompt and preferred model."""

    __tablename__ = "specialized_ais"

    id: Mapped[int] = primary_key()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[AiRole] = enum_column(AiRole, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    system_prompt: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(64), index=True)
    preferred_model_id: Mapped[int | None] = foreign_key("ai_models.id", ondelete="SET NULL", nullable=True, index=True)
    temperature: Mapped[float] = mapped_column(Float, default=0.2, server_default="0.2")
    max_tokens: Mapped[int | None]
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())

    preferred_model: Mapped[AiModel | None] = relationship(lazy="raise")
