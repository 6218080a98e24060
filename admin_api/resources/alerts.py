"""Alerts raised by the monitor and the engine; people acknowledge and resolve them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.endpoint import Ctx
from admin_api.problems import Conflict
from admin_api.resource import ApiModel, Filter, ReadModel, Resource, crud_routes
from bot.db.base import utcnow
from bot.db.models import Alert, AlertStatus, Severity


class AlertUpdate(ApiModel):
    """Acknowledge or resolve an alert (an alert never reopens: a new one is raised instead)."""

    status: Literal["acknowledged", "resolved"]


class AlertRead(ReadModel):
    """An alert and its lifecycle."""

    id: int
    kind: str
    severity: Severity
    status: AlertStatus
    message: str
    data: dict[str, object]
    dedupe_key: str
    occurrences: int
    opened_at: datetime
    last_seen_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by_user_id: int | None
    resolved_at: datetime | None


async def _transition(ctx: Ctx, session: AsyncSession, values: dict[str, Any], row: Any) -> dict[str, Any]:
    target = AlertStatus(values["status"])
    if row.status == AlertStatus.RESOLVED:
        raise Conflict("the alert is already resolved")
    now = utcnow()
    if target == AlertStatus.ACKNOWLEDGED:
        return {"status": target, "acknowledged_at": now, "acknowledged_by_user_id": ctx.user_id}
    # Resolving frees the open_key so the same condition can raise a new alert later.
    return {"status": target, "resolved_at": now, "open_key": None}


ALERTS = Resource(
    name="alerts", tag="alerts", model=Alert, read=AlertRead, update=AlertUpdate, deletable=False,
    prepare=_transition, sort_fields=("id", "opened_at", "last_seen_at"),
    filters={
        "status": Filter("status", AlertStatus),
        "severity": Filter("severity", Severity),
        "kind": Filter("kind", str),
        "since": Filter("opened_at", datetime, "ge"),
        "until": Filter("opened_at", datetime, "le"),
    },
)
routes = crud_routes(ALERTS)
