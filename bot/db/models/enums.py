"""The closed sets of values the models store (as their string values, see `_columns.enum_column`).

They are `StrEnum`s, so a member compares equal to its string and serialises as one in JSON.
"""

from __future__ import annotations

from enum import StrEnum


class UserRole(StrEnum):
    """What a person may do: admins manage everything, operators run work, viewers read."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Language(StrEnum):
    """Languages the product speaks to people in."""

    EN = "en"
    PT_BR = "pt-BR"


class ProviderKind(StrEnum):
    """The wire protocol an LLM server speaks."""

    LMSTUDIO = "lmstudio"
    OLLAMA = "ollama"
    OPENAI_COMPATIBLE = "openai_compatible"
    EMBEDDED = "embedded"


class HealthStatus(StrEnum):
    """Last known health of a provider or service."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"


class DiscoveryEvent(StrEnum):
    """What a model-list refresh noticed about a model."""

    DISCOVERED = "discovered"
    VANISHED = "vanished"
    REAPPEARED = "reappeared"
    LOADED = "loaded"
    UNLOADED = "unloaded"


class AiRole(StrEnum):
    """The job a specialised AI does in the orchestration."""

    PLANNER = "planner"
    CODER = "coder"
    REVIEWER = "reviewer"
    RESEARCHER = "researcher"
    WRITER = "writer"
    TIEBREAKER = "tiebreaker"
    ANALYST = "analyst"
    TRANSLATOR = "translator"
    SUMMARIZER = "summarizer"
    GENERAL = "general"


class AuthType(StrEnum):
    """How a service authenticates our calls."""

    OAUTH2 = "oauth2"
    API_KEY = "api_key"
    TOKEN = "token"  # noqa: S105 - an auth method name, not a secret


class CredentialStatus(StrEnum):
    """Lifecycle of a stored credential."""

    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"
    INVALID = "invalid"
    REVOKED = "revoked"


class TaskStatus(StrEnum):
    """Lifecycle of a task (a request split into subtasks)."""

    PENDING = "pending"
    PLANNING = "planning"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class SubtaskStatus(StrEnum):
    """Lifecycle of a subtask through execution, validation and tie-break."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    VALIDATING = "validating"
    TIEBREAKING = "tiebreaking"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class MessageRole(StrEnum):
    """Who wrote a chat message."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class InstructionScope(StrEnum):
    """Where a standing instruction applies."""

    GLOBAL = "global"
    CATEGORY = "category"
    TASK = "task"


class SyncStatus(StrEnum):
    """State of a knowledge source's last synchronisation."""

    NEVER = "never"
    SYNCING = "syncing"
    OK = "ok"
    FAILED = "failed"


class LogLevel(StrEnum):
    """Severity of an execution log entry."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Severity(StrEnum):
    """How urgent an alert or incident is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertStatus(StrEnum):
    """Lifecycle of an alert."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class IncidentStatus(StrEnum):
    """Lifecycle of an incident."""

    OPEN = "open"
    MITIGATED = "mitigated"
    RESOLVED = "resolved"


class AuditOutcome(StrEnum):
    """How an audited action ended."""

    SUCCESS = "success"
    DENIED = "denied"
    FAILED = "failed"


class TrainingMethod(StrEnum):
    """Fine-tuning method."""

    LORA = "lora"
    QLORA = "qlora"


class TrainingStatus(StrEnum):
    """Lifecycle of a training job."""

    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"
