"""Secrets at rest: AES-256-GCM blobs bound to their row, keys in a 0600 keyring or the environment.

Use `open_vault(settings)` once at start-up, then `vault.seal(value, table=…, column=…, row_id=…)`
before storing and `vault.open_text(blob, table=…, column=…, row_id=…)` after reading. Models
that store blobs list the columns in `__secret_columns__` so `orchestrator keys rotate` finds
them. The blob format is documented in bot/vault/blob.py and docs/vault.md.

Errors (rooted at bot.errors.OrchestratorError):

    VaultError                      also: a value too large to seal, a row without an id
    ├── KeyringError                keyring missing, corrupt, unsafe mode, malformed env keys
    ├── UnknownKeyError             a blob names a key the keyring lacks (or has retired)
    └── IntegrityError              a blob is altered, truncated, in the wrong row, or the key is wrong
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.vault.errors import IntegrityError, KeyringError, UnknownKeyError, VaultError
from bot.vault.keyring import Keyring, VaultKey, load_keyring
from bot.vault.vault import Secret, Vault

if TYPE_CHECKING:
    from bot.settings import Settings


def keyring_from_settings(settings: Settings, *, create: bool = False) -> Keyring:
    """The keyring the settings point at: ORCH_VAULT__KEYS if set, else the keyring file."""
    env_keys = settings.vault.keys.get_secret_value() if settings.vault.keys is not None else None
    return load_keyring(path=settings.keyring_path, env_keys=env_keys, create=create)


def open_vault(settings: Settings, *, create: bool = True) -> Vault:
    """The daemon's vault; on a first run the keyring file is created (and a warning logged)."""
    return Vault(keyring=keyring_from_settings(settings, create=create))


__all__ = [
    "IntegrityError",
    "Keyring",
    "KeyringError",
    "Secret",
    "UnknownKeyError",
    "Vault",
    "VaultError",
    "VaultKey",
    "keyring_from_settings",
    "load_keyring",
    "open_vault",
]
