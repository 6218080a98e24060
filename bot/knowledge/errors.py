"""The errors of knowledge synchronisation (tree drawn in bot/knowledge/__init__.py)."""

from __future__ import annotations

from bot.errors import OrchestratorError


class KnowledgeSyncError(OrchestratorError):
    """A knowledge source could not be synchronised; its previous documents are intact."""


class SourceRefused(KnowledgeSyncError):
    """The source's definition is not allowed here (the fix is in the source or the settings)."""


class FetchFailed(KnowledgeSyncError):
    """Reading the source failed (network, HTTP status, size, timeout)."""


class SyncInProgress(KnowledgeSyncError):
    """Another synchronisation of this source is running."""


class EmbeddingFailed(KnowledgeSyncError):
    """The embedding provider failed; nothing was written."""


class CredentialUnusable(KnowledgeSyncError):
    """The source's linked credential cannot be used (gone, revoked, expired, undecryptable, no usable field)."""
