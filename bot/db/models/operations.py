"""Running the system: alerts, metric history, incidents and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bot.db.base import Base, utcnow
from bot.db.models._columns import Key, ShortKey, enum_column, foreign_key, primary_key
from bot.db.models.enums import AlertStatus, AuditOutcome, IncidentStatus, Severity


class Alert(Base):
    """A condition someone should know about (CPU high, credential expiring, model down…).

    `open_key` equals `dedupe_key` while the alert is open and is NULL once resolved: its unique
    constraint allows one open alert per condition on both backends (MariaDB has no partial index).
    """

    __tablename__ = "alerts"
    __table_args__ = (Index(None, "status", "severity", "opened_at"), Index(None, "dedupe_key", "opened_at"))

    id: Mapped[int] = primary_key()
    kind: Mapped[str] = mapped_column(ShortKey)
    severity: Mapped[Severity] = enum_column(Severity, default=Severity.WARNING)
    status: Mapped[AlertStatus] = enum_column(AlertStatus, default=AlertStatus.OPEN)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dedupe_key: Mapped[str] = mapped_column(Key)
    open_key: Mapped[str | None] = mapped_column(Key, unique=True)
    occurrences: Mapped[int] = mapped_column(default=1, server_default="1")
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by_user_id: Mapped[int | None] = foreign_key(
        "users.id", ondelete="SET NULL", nullable=True, index=True
    )
    last_notified_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]


class MetricSample(Base):
    """One reading of a system metric (cpu_pct, ram_pct, vram_used_bytes…) for history charts."""

    __tablename__ = "metric_samples"
    __table_args__ = (Index(None, "metric", "at"), Index(None, "metric", "source", "at"))

    id: Mapped[int] = primary_key()
    metric: Mapped[str] = mapped_column(ShortKey)
    # Which instance: "" for the host, "gpu0", a disk mount, a provider name…
    source: Mapped[str] = mapped_column(Key, default="", server_default="")
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Incident(Base):
    """Something went wrong and the system acted (restart, unload, recovery); kept for review."""

    __tablename__ = "incidents"
    __table_args__ = (Index(None, "status", "started_at"), Index(None, "kind", "started_at"))

    id: Mapped[int] = primary_key()
    kind: Mapped[str] = mapped_column(ShortKey)
    severity: Mapped[Severity] = enum_column(Severity, default=Severity.WARNING)
    status: Mapped[IncidentStatus] = enum_column(IncidentStatus, default=IncidentStatus.OPEN)
    title: Mapped[str] = mapped_column(Key)
    description: Mapped[str] = mapped_column(Text, default="")
    alert_id: Mapped[int | None] = foreign_key("alerts.id", ondelete="SET NULL", nullable=True, index=True)
    task_id: Mapped[int | None] = foreign_key("tasks.id", ondelete="SET NULL", nullable=True, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What the system did about it, in order: [{"at": …, "action": …, "outcome": …}].
    actions: Mapped[list[Any]] = mapped_column(default=list)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]


class AuditLog(Base):
    """Who did what, from where, and how it ended (commands, terminal, credential use, admin API)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index(None, "actor_user_id", "at"),
        Index(None, "action", "at"),
        Index(None, "at"),
    )

    id: Mapped[int] = primary_key()
    actor_user_id: Mapped[int | None] = foreign_key("users.id", ondelete="SET NULL", nullable=True)
    platform: Mapped[str] = mapped_column(ShortKey)
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(Key)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outcome: Mapped[AuditOutcome] = enum_column(AuditOutcome, default=AuditOutcome.SUCCESS)
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
