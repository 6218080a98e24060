"""Failures of the chat platforms, as the core sees them.

PlatformError (bot.errors.OrchestratorError)
├── PlatformConfigError       a token, key or URL needed to connect is missing or wrong
├── RateLimitedError          the platform said "slow down"; carries retry_after seconds
├── SignatureError            an HTTP request's signature or timestamp does not verify
└── DeliveryError             a message could not be posted, edited or uploaded
"""

from __future__ import annotations

from bot.errors import OrchestratorError


class PlatformError(OrchestratorError):
    """Root of every failure talking to a chat platform."""


class PlatformConfigError(PlatformError):
    """The platform cannot be used with the configuration given."""


class RateLimitedError(PlatformError):
    """HTTP 429 (or Slack's `ratelimited`): wait `retry_after` seconds, then send again."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)


class SignatureError(PlatformError):
    """An incoming HTTP request is not provably from the platform (bad, missing or stale)."""


class DeliveryError(PlatformError):
    """The platform refused a message we tried to send; `code` is its error code, when it gave one."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
