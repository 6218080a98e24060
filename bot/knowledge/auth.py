"""A knowledge source's linked credential, opened into the one HTTP header its `url` is fetched with.

The credential is opened from the vault for the sync only, registered for log redaction, and kept
in a SecretStr, so neither the header value nor the fields it came from reach a log line, an error
message or an API answer. Which header it becomes depends on the credential's fields:

* `username` + `password`          → `Authorization: Basic base64(username:password)` (RFC 7617)
* a token field (first present of  → `Authorization: Bearer <token>`
  access_token, token, bearer_token, api_key, personal_access_token, integration_secret, bot_token)
* `header_name` (in the secret fields or the credential's metadata) sends the token field's value
  as is in that header instead (e.g. `X-API-Key: <key>`).

Who may point a credential at a URL is decided where sources are written (the admin API allows it
only to the credential's owner); here the credential must still exist, be neither revoked nor
expired, and hold usable fields.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.base import utcnow
from bot.db.models import Credential, CredentialStatus, KnowledgeSource
from bot.knowledge.errors import CredentialUnusable
from bot.logs import register_secret
from bot.vault.fields import CredentialFieldsError, open_fields

TOKEN_FIELDS = ("access_token", "token", "bearer_token", "api_key", "personal_access_token",
                "integration_secret", "bot_token")
HEADER_NAME_KEY = "header_name"
_TOKEN_CHARS = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # an RFC 9110 field name
# Headers the fetch sets itself or that change how the connection is framed or routed.
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
                       "keep-alive", "accept", "accept-encoding", "proxy-authorization", "proxy-connection"})


@dataclass(frozen=True)
class SourceAuth:
    """The header a `url` source is fetched with; the value prints as asterisks."""

    credential_id: int
    header: str
    value: SecretStr


def _text(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _header_name(fields: dict[str, Any], metadata: dict[str, Any], credential_id: int) -> str:
    chosen = fields.get(HEADER_NAME_KEY, metadata.get(HEADER_NAME_KEY))
    if chosen is None:
        return "Authorization"
    if not isinstance(chosen, str) or not _TOKEN_CHARS.match(chosen.strip()):
        raise CredentialUnusable(f"credential {credential_id}'s header_name is not a valid HTTP header name",
                                 hint="use a name such as X-API-Key (letters, digits and -)")
    name = chosen.strip()
    if name.lower() in _RESERVED:
        raise CredentialUnusable(f"credential {credential_id}'s header_name {name!r} is a header the fetch "
                                 "controls itself", hint="use Authorization or an X-… header")
    return name


def _safe_value(value: str, credential_id: int) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise CredentialUnusable(f"credential {credential_id} holds a value with a line break or NUL, "
                                 "which cannot be sent in an HTTP header", hint="store the secret again")
    register_secret(value)
    return value


def auth_from_fields(fields: dict[str, Any], metadata: dict[str, Any], credential_id: int) -> SourceAuth:
    """The header for a credential's opened fields (see the module docstring for the rules)."""
    header = _header_name(fields, metadata, credential_id)
    username, password = _text(fields, "username"), _text(fields, "password")
    if username is not None and password is not None and header.lower() == "authorization":
        if ":" in username:
            raise CredentialUnusable(f"credential {credential_id}'s username contains ':', which basic "
                                     "authentication cannot carry (RFC 7617)")
        register_secret(password)
        pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return SourceAuth(credential_id, header, SecretStr(_safe_value(f"Basic {pair}", credential_id)))
    token = next((value for name in TOKEN_FIELDS if (value := _text(fields, name)) is not None), None)
    if token is None:
        raise CredentialUnusable(
            f"credential {credential_id} holds neither username and password nor a token field",
            hint=f"store the secret as {{\"token\": \"…\"}} (or one of {', '.join(TOKEN_FIELDS[1:])}), "
                 "or as {\"username\": \"…\", \"password\": \"…\"}")
    register_secret(token)
    value = f"Bearer {token}" if header.lower() == "authorization" else token
    return SourceAuth(credential_id, header, SecretStr(_safe_value(value, credential_id)))


def _open_fields(vault: Any, credential: Credential) -> dict[str, Any]:
    try:
        return open_fields(vault, credential)
    except CredentialFieldsError as err:
        raise CredentialUnusable(err.message, hint=err.hint) from None


async def _credential(session: AsyncSession, source: KnowledgeSource) -> Credential:
    assert source.credential_id is not None
    credential = await session.get(Credential, source.credential_id)
    if credential is None:
        raise CredentialUnusable(f"knowledge source {source.id}'s credential {source.credential_id} no longer exists",
                                 hint="link another credential or unlink it (credential_id=null)")
    if credential.revoked_at is not None or credential.status == CredentialStatus.REVOKED:
        raise CredentialUnusable(f"credential {credential.id} is revoked", hint="link a current credential")
    expires = credential.expires_at
    if expires is not None and (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) <= utcnow():
        raise CredentialUnusable(f"credential {credential.id} expired at {expires.isoformat()}",
                                 hint="store a fresh secret in it or link another credential")
    return credential


async def source_auth(
    sessions: async_sessionmaker[AsyncSession], source: KnowledgeSource, vault: Any,
) -> SourceAuth | None:
    """The header to fetch `source` with, or None when it links no credential."""
    if source.credential_id is None:
        return None
    if source.kind != "url":
        raise CredentialUnusable(f"knowledge source {source.id} is of kind {source.kind!r}; only url sources "
                                 "send a credential", hint="unlink the credential (credential_id=null)")
    if vault is None:
        raise CredentialUnusable(
            f"knowledge source {source.id} links credential {source.credential_id}, and this process has no "
            "vault to open it", hint="run the sync where the daemon's keyring is (its data directory, or "
                                     "ORCH_VAULT__KEYS)")
    async with sessions() as session:
        credential = await _credential(session, source)
        fields = _open_fields(vault, credential)
        metadata = dict(credential.metadata_ or {})
    return auth_from_fields(fields, metadata, credential.id)
