"""Persistence: typed models, engines for SQLite and MariaDB, migrations and initial data.

Errors (rooted at bot.errors.OrchestratorError):

    DatabaseError
    ├── UnsupportedDatabaseError    server too old, or an unknown URL scheme
    ├── DatabaseUnreachableError    cannot connect
    └── MigrationError
        └── RevisionMismatchError   schema older or newer than this code
"""

from bot.db.errors import (
    DatabaseError,
    DatabaseUnreachableError,
    MigrationError,
    RevisionMismatchError,
    UnsupportedDatabaseError,
)

__all__ = [
    "DatabaseError",
    "DatabaseUnreachableError",
    "MigrationError",
    "RevisionMismatchError",
    "UnsupportedDatabaseError",
]
