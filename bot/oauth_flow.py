"""OAuth2 authorisations in flight: the one-time state, the PKCE pair, and the provider's URL.

Both ways into a flow use this module: the admin API's `GET /oauth/{service}/start` (an API caller
names a credential) and chat's `/connect <service>` (the chat user's own credential; the person
gets a link to the admin API's `GET /oauth/{service}/authorize?state=…`, which rebuilds the
provider URL from the stored flow). A flow stores only the SHA-256 of its state, the PKCE verifier
sealed by the vault and bound to its row, the exact redirect URI, the expected issuer and an
expiry; the callback (admin_api/oauth.py) consumes it once.

OAuthFlowError (bot.errors.OrchestratorError)
├── NoOAuthTemplate        the service has no OAuth2 credential template
├── CredentialNotUsable    no such credential, revoked, another person's, or it holds no OAuth client id
└── FlowStateInvalid       a state that is unknown, expired, already used, or for another service
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.base import utcnow
from bot.db.models import AuthType, Credential, CredentialTemplate, OAuthState
from bot.errors import OrchestratorError
from bot.vault.fields import CredentialFieldsError, open_fields

DEFAULT_TTL_S = 600
STATE_BYTES = 32
VERIFIER_BYTES = 64


class OAuthFlowError(OrchestratorError):
    """An OAuth2 flow cannot start or continue."""


class NoOAuthTemplate(OAuthFlowError):
    """The service's credential template is missing or is not OAuth2."""


class CredentialNotUsable(OAuthFlowError):
    """The credential cannot be authorised (missing, revoked, someone else's, no client id)."""


class FlowStateInvalid(OAuthFlowError):
    """The state does not name a live flow for this service."""


@dataclass(frozen=True, slots=True)
class StartedFlow:
    """A flow just stored: the state (shown once, never stored), where it leads, and until when."""

    flow_id: int
    service: str
    credential_id: int
    user_id: int
    state: str
    authorization_url: str
    expires_at: datetime


def state_hash(state: str) -> str:
    """What is stored instead of the state (a database reader cannot complete a flow)."""
    return hashlib.sha256(state.encode()).hexdigest()


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of a verifier (RFC 7636)."""
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    return str(create_s256_code_challenge(verifier))


def public_base_url(settings: Any) -> str:
    """The admin API's address as browsers reach it: `admin_api.public_url`, else its own host and port."""
    api = settings.admin_api
    if api.public_url:
        return str(api.public_url).rstrip("/")
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host  # noqa: S104 - mapping, not binding
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{api.port}"


def redirect_uri(base_url: str, service: str) -> str:
    """The callback the provider sends the browser back to (register it with the provider)."""
    return f"{base_url.rstrip('/')}/oauth/{service}/callback"


def authorize_link(base_url: str, service: str, state: str) -> str:
    """The admin API link chat hands out: it redirects to the provider for this one flow."""
    return f"{base_url.rstrip('/')}/oauth/{service}/authorize?{urlencode({'state': state})}"


async def oauth_template(session: AsyncSession, service: str) -> tuple[CredentialTemplate, dict[str, Any]]:
    """The service's OAuth2 template and its endpoints, or NoOAuthTemplate."""
    template = (await session.execute(
        select(CredentialTemplate).where(CredentialTemplate.service == service))).scalar_one_or_none()
    if template is None or template.auth_type != AuthType.OAUTH2 or not template.oauth:
        raise NoOAuthTemplate(f"no OAuth2 credential template for service {service!r}")
    return template, dict(template.oauth)


def credential_fields(vault: Any, credential: Credential) -> dict[str, Any]:
    """The credential's sealed form fields (client id and secret, tokens), for the flow only."""
    try:
        return open_fields(vault, credential)
    except CredentialFieldsError as err:
        raise CredentialNotUsable(err.message) from None


def _client_id(vault: Any, credential: Credential) -> str:
    if credential.revoked_at is not None:
        raise CredentialNotUsable("the credential is revoked")
    client_id = credential_fields(vault, credential).get("client_id")
    if not client_id:
        raise CredentialNotUsable("the credential has no client_id; store the OAuth client's id and secret first")
    return str(client_id)


def authorization_url(oauth: dict[str, Any], *, client_id: str, redirect: str, state: str, verifier: str,
                      scopes: list[Any]) -> str:
    """The provider's authorize URL for one flow (code grant, PKCE S256)."""
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": state,
        "code_challenge": s256(verifier), "code_challenge_method": "S256",
    }
    if scopes:
        params["scope"] = str(oauth.get("scope_separator") or " ").join(str(s) for s in scopes)
    params.update({str(k): str(v) for k, v in (oauth.get("extra_authorize_params") or {}).items()})
    base = str(oauth["authorize_url"])
    return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"


async def _store_flow(session: AsyncSession, *, vault: Any, service: str, credential: Credential, client_id: str,
                      oauth: dict[str, Any], redirect: str, ttl_s: int) -> StartedFlow:
    state = secrets.token_urlsafe(STATE_BYTES)
    verifier = secrets.token_urlsafe(VERIFIER_BYTES)
    expires_at = utcnow() + timedelta(seconds=ttl_s)
    row = OAuthState(state_hash=state_hash(state), user_id=credential.user_id, service=service,
                     credential_id=credential.id, code_verifier_blob=b"", redirect_uri=redirect,
                     issuer=oauth.get("issuer"), scopes=list(oauth.get("scopes") or []), expires_at=expires_at)
    session.add(row)
    await session.flush()  # the row id binds the sealed verifier; the caller commits both together
    row.code_verifier_blob = vault.seal(verifier, table="oauth_states", column="code_verifier_blob", row_id=row.id)
    url = authorization_url(oauth, client_id=client_id, redirect=redirect, state=state, verifier=verifier,
                            scopes=list(row.scopes))
    return StartedFlow(flow_id=row.id, service=service, credential_id=credential.id, user_id=credential.user_id,
                       state=state, authorization_url=url, expires_at=expires_at)


async def begin_flow(session: AsyncSession, *, vault: Any, service: str, credential: Credential, redirect: str,
                     ttl_s: int = DEFAULT_TTL_S) -> StartedFlow:
    """A flow that authorises `credential` (the caller checked who may); committed."""
    _, oauth = await oauth_template(session, service)
    client_id = _client_id(vault, credential)
    started = await _store_flow(session, vault=vault, service=service, credential=credential, client_id=client_id,
                                oauth=oauth, redirect=redirect, ttl_s=ttl_s)
    await session.commit()
    return started


async def user_oauth_credentials(session: AsyncSession, *, user_id: int, service: str) -> list[Credential]:
    """A person's live credentials for a service, most recently changed first."""
    rows = await session.scalars(
        select(Credential)
        .where(Credential.user_id == user_id, Credential.service == service, Credential.revoked_at.is_(None))
        .order_by(Credential.updated_at.desc(), Credential.id.desc())
    )
    return list(rows.all())


async def start_for_user(session: AsyncSession, *, vault: Any, service: str, user_id: int, redirect: str,
                         credential_name: str | None = None, ttl_s: int = DEFAULT_TTL_S) -> StartedFlow:
    """A flow for a person's own credential holding the service's OAuth client (chat's /connect); committed.

    Without a name, the most recently changed credential of theirs that holds a client id is used.
    """
    _, oauth = await oauth_template(session, service)
    candidates = await user_oauth_credentials(session, user_id=user_id, service=service)
    if credential_name is not None:
        candidates = [c for c in candidates if c.name == credential_name]
    last_problem: CredentialNotUsable | None = None
    for credential in candidates:
        try:
            client_id = _client_id(vault, credential)
        except CredentialNotUsable as err:
            last_problem = err
            continue
        started = await _store_flow(session, vault=vault, service=service, credential=credential,
                                    client_id=client_id, oauth=oauth, redirect=redirect, ttl_s=ttl_s)
        await session.commit()
        return started
    raise last_problem or CredentialNotUsable(f"you have no {service} credential holding an OAuth client")


async def live_flow(session: AsyncSession, *, service: str, state: str) -> OAuthState:
    """The unconsumed, unexpired flow a state names for this service, or FlowStateInvalid."""
    row = (await session.execute(select(OAuthState).where(
        OAuthState.state_hash == state_hash(state), OAuthState.service == service,
        OAuthState.consumed_at.is_(None), OAuthState.expires_at > utcnow()))).scalar_one_or_none()
    if row is None:
        raise FlowStateInvalid("the link is unknown, expired or already used; run /connect again")
    return row


async def resume_authorization_url(session: AsyncSession, *, vault: Any, service: str, state: str) -> str:
    """The provider URL of a stored flow, rebuilt from its sealed verifier (the chat link's target)."""
    flow = await live_flow(session, service=service, state=state)
    _, oauth = await oauth_template(session, service)
    credential = await session.get(Credential, flow.credential_id) if flow.credential_id else None
    if credential is None:
        raise FlowStateInvalid("the credential this link was for no longer exists")
    client_id = _client_id(vault, credential)
    verifier = vault.open_text(flow.code_verifier_blob, table="oauth_states", column="code_verifier_blob",
                               row_id=flow.id).get_secret_value()
    return authorization_url(oauth, client_id=client_id, redirect=flow.redirect_uri, state=state,
                             verifier=verifier, scopes=list(flow.scopes or []))


async def withdraw_flow(session: AsyncSession, flow_id: int) -> None:
    """Make a flow unusable (its link could not be delivered privately); committed."""
    row = await session.get(OAuthState, flow_id)
    if row is not None and row.consumed_at is None:
        row.consumed_at = utcnow()
        await session.commit()
