"""The durable queue's error tree (drawn in bot/engine/queue/__init__.py)."""

from __future__ import annotations

from bot.errors import OrchestratorError


class QueueError(OrchestratorError):
    """Root of the durable queue's expected failures."""


class LeaseLostError(QueueError):
    """This worker no longer holds the job: its lease expired, was reclaimed, or it was cancelled.

    Raised to a handler that tries to checkpoint after losing its lease, so a stale attempt stops
    instead of writing over the attempt that now owns the job.
    """


class PermanentJobError(QueueError):
    """A handler's verdict that retrying cannot help (bad input, refused request): dead-letter now."""


class JobPayloadError(QueueError):
    """A job could not be enqueued as given (bad key, kind, priority or non-JSON payload)."""


class UnknownJobError(QueueError):
    """No job has that id."""
