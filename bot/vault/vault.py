"""Seal and open secrets with AES-256-GCM, each blob bound to the row and column it lives in.

A fresh 96-bit nonce comes from os.urandom for every seal. With random nonces NIST SP 800-38D
bounds one key to 2^32 encryptions; a secret store seals a few values per credential change, far
below that, and `orchestrator keys rotate` starts a new key (and count) whenever you want.

Failures are never quiet: a missing, truncated, altered or misplaced blob, or a key that does not
match, raises IntegrityError or UnknownKeyError naming the table, column and row (never the
value), so a broken secret is never mistaken for an empty one.
"""

from __future__ import annotations

import contextlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from bot.logs import register_secret
from bot.vault import blob
from bot.vault.errors import IntegrityError, UnknownKeyError, VaultError
from bot.vault.keyring import Keyring, VaultKey

MAX_PLAINTEXT_BYTES = 1024 * 1024
_INTEGRITY_HINT = (
    "restore the row from a backup or enter the secret again; if the keyring file was replaced, "
    "restore the original keyring from your backup"
)

Secret = SecretStr
"""An opened secret: `str()`, `repr()` and pydantic dumps show `**********`, never the value."""


def _location(table: str, column: str, row_id: int | str) -> str:
    return f"{table}.{column} of row {row_id}"


class Vault:
    """Encrypts secrets for storage in one row's column and decrypts them back."""

    def __init__(self, *, keyring: Keyring) -> None:
        self.keyring = keyring

    def __repr__(self) -> str:
        return f"Vault(current_key={self.keyring.current_id!r})"

    def seal(self, plaintext: str | bytes | SecretStr, *, table: str, column: str, row_id: int | str) -> bytes:
        """Encrypt a value for `table.column` of row `row_id` with the current key."""
        self.keyring.refresh()
        return self.seal_with(self.keyring.current, plaintext, table=table, column=column, row_id=row_id)

    def seal_with(
        self,
        key: VaultKey,
        plaintext: str | bytes | SecretStr,
        *,
        table: str,
        column: str,
        row_id: int | str,
    ) -> bytes:
        """Encrypt with a given key (rotation seals with the new key before it becomes current)."""
        if isinstance(plaintext, SecretStr):
            plaintext = plaintext.get_secret_value()
        data = plaintext.encode("utf-8") if isinstance(plaintext, str) else bytes(plaintext)
        if len(data) > MAX_PLAINTEXT_BYTES:
            raise VaultError(
                f"the value for {_location(table, column, row_id)} is {len(data)} bytes; "
                f"the vault seals at most {MAX_PLAINTEXT_BYTES}",
                hint="store large data elsewhere and keep only its credentials in the vault",
            )
        if row_id is None or str(row_id) == "":
            raise VaultError(
                f"cannot seal a value for {table}.{column} without a row id",
                hint="flush the row first so its primary key is known, then seal",
            )
        nonce = os.urandom(blob.NONCE_SIZE)
        associated = blob.associated_data(
            version=blob.VERSION, table=table, column=column, row_id=row_id, key_id=key.id
        )
        ciphertext = AESGCM(key.material).encrypt(nonce, data, associated)
        return blob.pack(key_id=key.id, nonce=nonce, ciphertext=ciphertext)

    def open(self, sealed: bytes | None, *, table: str, column: str, row_id: int | str) -> bytes:
        """Decrypt a blob read from `table.column` of row `row_id`, or raise; never returns a blank."""
        data = self.open_unregistered(sealed, table=table, column=column, row_id=row_id)
        with contextlib.suppress(UnicodeDecodeError):  # binary values never appear in text logs
            register_secret(data.decode("utf-8"))
        return data

    def open_text(self, sealed: bytes | None, *, table: str, column: str, row_id: int | str) -> SecretStr:
        """Decrypt a text secret, wrapped so that printing or logging it shows only asterisks."""
        data = self.open_unregistered(sealed, table=table, column=column, row_id=row_id)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError(
                f"{_location(table, column, row_id)} decrypted to bytes that are not UTF-8 text",
                hint="this column holds binary data; read it with Vault.open",
            ) from None
        register_secret(text)
        return SecretStr(text)

    def key_id_of(self, sealed: bytes, *, table: str, column: str, row_id: int | str) -> str:
        """Which key sealed a blob (from its header, without decrypting)."""
        return self._parse(sealed, table=table, column=column, row_id=row_id).key_id

    def open_unregistered(self, sealed: bytes | None, *, table: str, column: str, row_id: int | str) -> bytes:
        """Decrypt without registering the value for log redaction (rotation re-seals in bulk)."""
        where = _location(table, column, row_id)
        parsed = self._parse(sealed, table=table, column=column, row_id=row_id)
        try:
            key = self.keyring.usable(parsed.key_id)
        except UnknownKeyError as err:
            raise UnknownKeyError(
                f"cannot decrypt {where}: it was sealed with key {parsed.key_id!r}, "
                f"which the vault cannot use ({err.message})",
                hint=err.hint,
            ) from None
        associated = blob.associated_data(
            version=parsed.version, table=table, column=column, row_id=row_id, key_id=parsed.key_id
        )
        try:
            return AESGCM(key.material).decrypt(parsed.nonce, parsed.ciphertext, associated)
        except InvalidTag:
            raise IntegrityError(
                f"cannot decrypt {where} with key {parsed.key_id!r}: the stored bytes were altered, "
                "belong to another row or column, or this key is not the one that sealed them",
                hint=_INTEGRITY_HINT,
            ) from None

    @staticmethod
    def _parse(sealed: bytes | None, *, table: str, column: str, row_id: int | str) -> blob.ParsedBlob:
        where = _location(table, column, row_id)
        if sealed is None or len(sealed) == 0:
            raise IntegrityError(f"{where} holds no sealed value", hint=_INTEGRITY_HINT)
        try:
            return blob.parse(sealed)
        except blob.BlobFormatError as err:
            raise IntegrityError(f"{where} is not a readable sealed value: {err}", hint=_INTEGRITY_HINT) from None
