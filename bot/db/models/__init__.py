"""Every ORM model, importable from one place; importing this package fills `Base.metadata`.

Split by domain: users, credentials, providers (and specialised AIs), tasks, chat, templates,
knowledge, quality, operations, storage, training, and the durable queue (queue.py).
"""

from __future__ import annotations

from bot.db.base import Base
from bot.db.models.chat import ChatConversation, ChatMessage
from bot.db.models.credentials import Credential, CredentialTemplate, ExternalApiAccount, OAuthState
from bot.db.models.enums import (
    AiRole,
    AlertStatus,
    AuditOutcome,
    AuthType,
    CredentialStatus,
    DiscoveryEvent,
    HealthStatus,
    IncidentStatus,
    InstructionScope,
    Language,
    LogLevel,
    MessageRole,
    ProviderKind,
    Severity,
    SubtaskStatus,
    SyncStatus,
    TaskStatus,
    TrainingMethod,
    TrainingStatus,
    UserRole,
)
from bot.db.models.knowledge import KnowledgeEntry, KnowledgeSource
from bot.db.models.operations import Alert, AuditLog, Incident, MetricSample
from bot.db.models.providers import AiModel, AiProvider, CreditUsage, ModelDiscovery, SpecializedAi
from bot.db.models.quality import AiQualityMetric, ModelRating
from bot.db.models.queue import Job, JobCheckpoint, QueueWorker
from bot.db.models.storage import StoredObject
from bot.db.models.tasks import ExecutionLog, Subtask, Task, TaskEvent, TaskMonitoring
from bot.db.models.templates import AiTemplate, AiWorkflow, Instruction
from bot.db.models.training import Dataset, ModelVersion, TrainingJob
from bot.db.models.users import ApiToken, User, UserIdentity

__all__ = [
    "AiModel",
    "AiProvider",
    "AiQualityMetric",
    "AiRole",
    "AiTemplate",
    "AiWorkflow",
    "Alert",
    "AlertStatus",
    "ApiToken",
    "AuditLog",
    "AuditOutcome",
    "AuthType",
    "Base",
    "ChatConversation",
    "ChatMessage",
    "Credential",
    "CredentialStatus",
    "CredentialTemplate",
    "CreditUsage",
    "Dataset",
    "DiscoveryEvent",
    "ExecutionLog",
    "ExternalApiAccount",
    "HealthStatus",
    "Incident",
    "IncidentStatus",
    "Instruction",
    "InstructionScope",
    "Job",
    "JobCheckpoint",
    "KnowledgeEntry",
    "KnowledgeSource",
    "Language",
    "LogLevel",
    "MessageRole",
    "MetricSample",
    "ModelDiscovery",
    "ModelRating",
    "ModelVersion",
    "OAuthState",
    "ProviderKind",
    "QueueWorker",
    "Severity",
    "SpecializedAi",
    "StoredObject",
    "Subtask",
    "SubtaskStatus",
    "SyncStatus",
    "Task",
    "TaskEvent",
    "TaskMonitoring",
    "TaskStatus",
    "TrainingJob",
    "TrainingMethod",
    "TrainingStatus",
    "User",
    "UserIdentity",
    "UserRole",
]
