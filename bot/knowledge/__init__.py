"""Knowledge sources: fetch documents (URL, file, directory), chunk them, and upsert them into the
knowledge base in one transaction, so a failed sync never leaves a half-replaced source.

    from bot.knowledge import sync_source
    report = await sync_source(sessions, source_id, settings=settings.knowledge, embedder=embedder, vault=vault)

Errors (rooted at bot.errors.OrchestratorError):

    KnowledgeSyncError
    ├── SourceRefused        the source's definition is not allowed (kind, path outside the roots,
    │                        private address, unsupported content) — fix the source or the settings
    ├── CredentialUnusable   the linked credential is gone, revoked, expired or holds no usable field
    ├── FetchFailed          the source could not be read (HTTP error, timeout, too large)
    ├── EmbeddingFailed      the embedding provider failed
    └── SyncInProgress       another sync of the same source is running
"""

from __future__ import annotations

from bot.knowledge.errors import (
    CredentialUnusable,
    EmbeddingFailed,
    FetchFailed,
    KnowledgeSyncError,
    SourceRefused,
    SyncInProgress,
)
from bot.knowledge.sync import SyncReport, due_sources, sync_source

__all__ = [
    "CredentialUnusable", "EmbeddingFailed", "FetchFailed", "KnowledgeSyncError", "SourceRefused", "SyncInProgress",
    "SyncReport", "due_sources", "sync_source",
]
