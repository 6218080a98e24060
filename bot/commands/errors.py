"""Failures a command reports to the person who typed it.

CommandError (bot.errors.OrchestratorError)   expected; shown translated, no traceback
├── UsageError                                the arguments do not fit the command
├── PermissionDeniedError                     the person's role is too low, or they are unknown
└── NotFoundError                             a named thing (model, alert, template…) does not exist
"""

from __future__ import annotations

from typing import Any

from bot.errors import OrchestratorError


class CommandError(OrchestratorError):
    """An expected failure; `key` and `params` select the translated text the person reads."""

    def __init__(self, key: str, **params: Any) -> None:
        from bot.platforms.i18n import translate

        super().__init__(translate(key, "en", **params))
        self.key = key
        self.params = params


class UsageError(CommandError):
    """The arguments are wrong; `usage` is the usage line(s) of the command meant, when known."""

    usage: str | None = None


class PermissionDeniedError(CommandError):
    """The person may not run this command."""


class NotFoundError(CommandError):
    """The thing the person named does not exist."""
