"""The database package's error tree (drawn in bot/db/__init__.py)."""

from bot.errors import OrchestratorError


class DatabaseError(OrchestratorError):
    """Root of the database package's expected failures."""


class UnsupportedDatabaseError(DatabaseError):
    """The server or URL cannot hold the orchestrator's data."""


class DatabaseUnreachableError(DatabaseError):
    """The database server did not accept a connection."""


class MigrationError(DatabaseError):
    """A schema migration could not be applied or checked."""


class RevisionMismatchError(MigrationError):
    """The database's schema revision is not the one this code expects."""
