"""The monitor's rows: incidents, alerts and the downsampled metric history.

Each method is one short transaction of its own: the monitor writes rarely (an incident when a
rule fires, one batch of metric rows a minute) and must never hold a lock the queue waits for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.base import utcnow
from bot.db.models.enums import AlertStatus, IncidentStatus, Severity
from bot.db.models.operations import Alert, Incident, MetricSample

_KEY_MAX = 255
_SHORT_MAX = 64


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One downsampled point: the mean of a reading over a window."""

    metric: str
    source: str
    value: float
    at: datetime


def split_metric_name(name: str) -> tuple[str, str]:
    """`disk./home.percent` → (`disk.percent`, `/home`); `cpu.percent` → (`cpu.percent`, ``).

    A reading name is `<group>.<instance…>.<field>`: the history table keeps the group and field
    as the metric and the instance (mount, GPU, core, server) as the source, so charts can ask for
    "disk.percent" across every mount.
    """
    if name.startswith("latency.") and name.endswith("_ms"):
        return "latency_ms", name[len("latency.") : -len("_ms")]
    parts = name.split(".")
    if name.startswith("disk."):
        group_and_rest, _, field = name.rpartition(".")
        return f"disk.{field}", group_and_rest[len("disk.") :]
    if len(parts) >= 3:
        return f"{parts[0]}.{parts[-1]}", ".".join(parts[1:-1])
    return name, ""


def join_metric_name(metric: str, source: str) -> str:
    """The reading name a (metric, source) pair came from (inverse of `split_metric_name`)."""
    if metric == "latency_ms" and source:
        return f"latency.{source}_ms"
    if not source:
        return metric
    group, _, field = metric.partition(".")
    return f"{group}.{source}.{field}"


class MonitorStore:
    """Reads and writes of incidents, alerts and metric history."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def ping(self) -> None:
        """One round trip to the database (raises when it cannot be reached)."""
        async with self._sessions() as session:
            await session.execute(text("select 1"))

    # -- incidents ---------------------------------------------------------------------------

    async def open_incident(
        self,
        *,
        kind: str,
        title: str,
        description: str = "",
        severity: Severity = Severity.WARNING,
        details: Mapping[str, Any] | None = None,
        alert_id: int | None = None,
    ) -> int:
        """Record that something went wrong; returns the incident id."""
        async with self._sessions() as session, session.begin():
            incident = Incident(
                kind=kind[:_SHORT_MAX],
                title=title[:_KEY_MAX],
                description=description,
                severity=severity,
                status=IncidentStatus.OPEN,
                details=dict(details or {}),
                actions=[],
                alert_id=alert_id,
                started_at=utcnow(),
            )
            session.add(incident)
            await session.flush()
            return int(incident.id)

    async def add_incident_action(
        self, incident_id: int, *, action: str, outcome: str, ok: bool = True, mitigated: bool = False
    ) -> None:
        """Append what the system did to an incident (and mark it mitigated when it helped)."""
        async with self._sessions() as session, session.begin():
            incident = await session.get(Incident, incident_id, with_for_update=True)
            if incident is None:
                return
            entry = {"at": utcnow().isoformat(), "action": action, "outcome": outcome, "ok": ok}
            incident.actions = [*list(incident.actions or []), entry]
            if mitigated and incident.status == IncidentStatus.OPEN:
                incident.status = IncidentStatus.MITIGATED

    async def link_alert(self, incident_id: int, alert_id: int) -> None:
        """Point an incident at the alert that announced it."""
        async with self._sessions() as session, session.begin():
            await session.execute(update(Incident).where(Incident.id == incident_id).values(alert_id=alert_id))

    async def resolve_incident(self, incident_id: int, *, outcome: str) -> None:
        """Close an incident, noting how it ended."""
        async with self._sessions() as session, session.begin():
            incident = await session.get(Incident, incident_id, with_for_update=True)
            if incident is None or incident.status == IncidentStatus.RESOLVED:
                return
            entry = {"at": utcnow().isoformat(), "action": "resolved", "outcome": outcome, "ok": True}
            incident.actions = [*list(incident.actions or []), entry]
            incident.status = IncidentStatus.RESOLVED
            incident.resolved_at = utcnow()

    async def open_incidents(self, *, kind_prefix: str = "") -> list[Incident]:
        """Incidents not yet resolved, oldest first (for /status and after a restart)."""
        async with self._sessions() as session:
            query = select(Incident).where(Incident.status != IncidentStatus.RESOLVED)
            if kind_prefix:
                query = query.where(Incident.kind.startswith(kind_prefix))
            return list((await session.execute(query.order_by(Incident.started_at, Incident.id))).scalars())

    # -- alerts ------------------------------------------------------------------------------

    async def raise_alert(
        self,
        *,
        kind: str,
        dedupe_key: str,
        message: str,
        severity: Severity = Severity.WARNING,
        data: Mapping[str, Any] | None = None,
    ) -> tuple[int, bool]:
        """Open an alert, or count one more occurrence of the open one; returns (id, is_new)."""
        now = utcnow()
        key = dedupe_key[:_KEY_MAX]
        async with self._sessions() as session, session.begin():
            existing = (
                await session.execute(select(Alert).where(Alert.open_key == key).with_for_update())
            ).scalar_one_or_none()
            if existing is not None:
                existing.occurrences = int(existing.occurrences) + 1
                existing.last_seen_at = now
                existing.message = message
                existing.data = dict(data or {})
                return int(existing.id), False
            alert = Alert(
                kind=kind[:_SHORT_MAX],
                severity=severity,
                status=AlertStatus.OPEN,
                message=message,
                data=dict(data or {}),
                dedupe_key=key,
                open_key=key,
                opened_at=now,
                last_seen_at=now,
                last_notified_at=now,
            )
            session.add(alert)
            await session.flush()
            return int(alert.id), True

    async def resolve_alert(self, dedupe_key: str) -> int | None:
        """Resolve the open alert of a condition; returns its id, None when none was open."""
        key = dedupe_key[:_KEY_MAX]
        async with self._sessions() as session, session.begin():
            alert = (
                await session.execute(select(Alert).where(Alert.open_key == key).with_for_update())
            ).scalar_one_or_none()
            if alert is None:
                return None
            alert.status = AlertStatus.RESOLVED
            alert.open_key = None
            alert.resolved_at = utcnow()
            return int(alert.id)

    # -- metric history ----------------------------------------------------------------------

    async def write_metrics(self, rows: Sequence[MetricRow]) -> int:
        """Insert downsampled points in one statement; returns how many."""
        if not rows:
            return 0
        values = [
            {"metric": row.metric[:_SHORT_MAX], "source": row.source[:_KEY_MAX], "value": row.value, "at": row.at}
            for row in rows
        ]
        async with self._sessions() as session, session.begin():
            await session.execute(insert(MetricSample), values)
        return len(values)

    async def metric_history(
        self, *, metric: str, source: str = "", since: datetime, until: datetime | None = None
    ) -> list[tuple[datetime, float]]:
        """Stored points of one metric and source, oldest first."""
        query = select(MetricSample.at, MetricSample.value).where(
            MetricSample.metric == metric, MetricSample.source == source, MetricSample.at >= since
        )
        if until is not None:
            query = query.where(MetricSample.at <= until)
        async with self._sessions() as session:
            rows = await session.execute(query.order_by(MetricSample.at))
            return [(at, float(value)) for at, value in rows]

    async def prune(self, *, metrics_older_than: timedelta, incidents_older_than: timedelta) -> dict[str, int]:
        """Delete history and resolved incidents past their retention; returns counts."""
        now = utcnow()
        async with self._sessions() as session, session.begin():
            metrics = await session.execute(delete(MetricSample).where(MetricSample.at < now - metrics_older_than))
            incidents = await session.execute(
                delete(Incident).where(
                    Incident.status == IncidentStatus.RESOLVED,
                    Incident.resolved_at < now - incidents_older_than,
                )
            )
        return {
            "metric_samples": int(getattr(metrics, "rowcount", 0) or 0),
            "incidents": int(getattr(incidents, "rowcount", 0) or 0),
        }

    async def count_metrics(self) -> int:
        """How many history rows exist (for /status)."""
        async with self._sessions() as session:
            return int((await session.execute(select(func.count()).select_from(MetricSample))).scalar_one())
