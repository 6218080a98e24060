"""A credential's sealed form fields, opened in one place for every caller that needs them.

Credentials store their secret as a JSON object of the template's form fields (api_key, token,
client_id and client_secret…), sealed in `credentials.secret_blob`. The OAuth flow, credit sync
and knowledge-source sync each need those fields; they translate `CredentialFieldsError` into
their own error kind, and its message names the credential, never a value.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from bot.vault.errors import VaultError


class CredentialFieldsError(VaultError):
    """A credential's secret cannot be opened, or is not a JSON object of form fields."""


class SealedCredential(Protocol):
    """What `open_fields` reads of a credentials row."""

    id: int
    secret_blob: bytes


def open_fields(vault: Any, credential: SealedCredential) -> dict[str, Any]:
    """The credential's form fields, decrypted (for the request that needs them; never for output)."""
    try:
        opened = vault.open_text(credential.secret_blob, table="credentials", column="secret_blob",
                                 row_id=credential.id)
    except VaultError as err:  # expected: a damaged blob or a missing key; the message names no value
        raise CredentialFieldsError(f"credential {credential.id} cannot be decrypted: {err.message}",
                                    hint=err.hint) from None
    try:
        value = json.loads(opened.get_secret_value())
    except ValueError:
        value = None
    if not isinstance(value, dict):  # e.g. a provider token stored as a bare string
        raise CredentialFieldsError(f"credential {credential.id} does not hold form fields",
                                    hint="store its secret again as a JSON object of its form fields")
    return value
