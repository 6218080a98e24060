"""Execution logs: every model interaction and engine decision, filterable (read-only)."""

from __future__ import annotations

from datetime import datetime

from admin_api.resource import Filter, ReadModel, Resource, crud_routes
from bot.db.models import ExecutionLog, LogLevel


class ExecutionLogRead(ReadModel):
    """One log entry with prompt and answer."""

    id: int
    task_id: int | None
    subtask_id: int | None
    model_id: int | None
    provider_id: int | None
    level: LogLevel
    event: str
    prompt: str | None
    response: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int | None
    details: dict[str, object]
    created_at: datetime


EXECUTION_LOGS = Resource(
    name="execution-logs", tag="execution logs", model=ExecutionLog, read=ExecutionLogRead,
    deletable=False, singular="execution log", sort_fields=("id", "created_at"),
    filters={
        "task_id": Filter("task_id", int),
        "subtask_id": Filter("subtask_id", int),
        "model_id": Filter("model_id", int),
        "provider_id": Filter("provider_id", int),
        "level": Filter("level", LogLevel),
        "event": Filter("event", str),
        "since": Filter("created_at", datetime, "ge", "entries at or after this time (ISO 8601)"),
        "until": Filter("created_at", datetime, "le", "entries at or before this time (ISO 8601)"),
    },
)
routes = crud_routes(EXECUTION_LOGS)
