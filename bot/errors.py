"""The root of every error the orchestrator raises on purpose.

Each package roots its own tree here, so the CLI and the daemon's boundaries can tell an
expected failure (a message and a hint for the user, no traceback) from a bug:

    OrchestratorError
    ├── ConfigError                      bot.settings
    ├── DatabaseError                    bot.db
    │   ├── UnsupportedDatabaseError
    │   ├── DatabaseUnreachableError
    │   └── MigrationError
    │       └── RevisionMismatchError
    └── VaultError                       bot.vault
        ├── KeyringError
        ├── UnknownKeyError
        └── IntegrityError
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """An expected failure with a message a person can act on.

    `hint` says how to fix it; the CLI prints both and exits with status 2.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  fix: {self.hint}"
