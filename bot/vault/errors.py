"""The vault's error tree (drawn in bot/vault/__init__.py)."""

from __future__ import annotations

from bot.errors import OrchestratorError


class VaultError(OrchestratorError):
    """Root of the vault's expected failures."""


class KeyringError(VaultError):
    """The keyring cannot be used: missing, corrupt, unsafe permissions or malformed keys."""


class UnknownKeyError(VaultError):
    """A blob names a key the keyring does not hold (or holds only as retired)."""


class IntegrityError(VaultError):
    """A blob does not authenticate: altered, truncated, sealed for another row, or the wrong key."""
