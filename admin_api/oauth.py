"""OAuth2 authorisation-code flow with PKCE (S256) for credentials whose template is OAuth2.

start:    the caller names a credential holding the OAuth client (client_id, client_secret). We
          store a one-time state (only its SHA-256) with the PKCE verifier sealed by the vault, the
          exact redirect URI and the expected issuer, then redirect to the authorization server.
          The flow itself is built in bot/oauth_flow.py, which chat's /connect uses too.
authorize: the link /connect hands a chat user: no token, the one-time state is the
          authentication; it redirects to the authorization server for that stored flow.
callback: the state is consumed atomically (a second use finds nothing), the issuer is checked
          (RFC 9207), the code is exchanged with the verifier at the template's token URL, and the
          token set is sealed into the credential. Any failure stores nothing. The outcome is
          published on the event bus (topic "credential", with the flow id) so a chat that started
          the flow can tell its person.
"""

from __future__ import annotations

import html
from datetime import timedelta
from typing import Any

import httpx
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update

from admin_api.endpoint import Ctx, endpoint
from admin_api.problems import (
    ApiProblem,
    Conflict,
    InsufficientScope,
    NotFound,
    OAuthDenied,
    OAuthExchangeFailed,
    OAuthIssuerMismatch,
    OAuthStateInvalid,
    Unavailable,
)
from admin_api.resources.credentials import open_secret, seal_secret, vault_of
from admin_api.state import BUS, OPTIONS, SERVICES, SESSIONS, SETTINGS
from bot.db.base import utcnow
from bot.db.models import Credential, CredentialStatus, OAuthState
from bot.events import Event
from bot.logs import get_logger
from bot.oauth_flow import (
    CredentialNotUsable,
    FlowStateInvalid,
    NoOAuthTemplate,
    begin_flow,
    oauth_template,
    resume_authorization_url,
    state_hash,
)

routes = web.RouteTableDef()
_log = get_logger(__name__)
TAG = "oauth"
EXCHANGE_TIMEOUT_S = 20.0


class StartQuery(BaseModel):
    """Which credential (holding the OAuth client id and secret) to authorise."""

    model_config = ConfigDict(extra="forbid")
    credential_id: int = Field(ge=1, le=2**63 - 1)


class StartResult(BaseModel):
    """Where to send the person (also the Location of the 302)."""

    authorization_url: str
    expires_at: str


class CallbackQuery(BaseModel):
    """What the authorization server appends to the redirect URI."""

    model_config = ConfigDict(extra="allow")
    state: str | None = Field(default=None, max_length=512)
    code: str | None = Field(default=None, max_length=4096)
    iss: str | None = Field(default=None, max_length=1000)
    error: str | None = Field(default=None, max_length=200)


class AuthorizeQuery(BaseModel):
    """The one-time state of a flow begun in chat."""

    model_config = ConfigDict(extra="forbid")
    state: str = Field(min_length=20, max_length=512)


def _redirect_uri(ctx: Ctx, service: str) -> str:
    public = ctx.request.app[SETTINGS].admin_api.public_url
    base = public.rstrip("/") if public else str(ctx.request.url.origin())
    return f"{base}/oauth/{service}/callback"


async def _oauth_template(session: Any, service: str) -> dict[str, Any]:
    try:
        _, oauth = await oauth_template(session, service)
    except NoOAuthTemplate as err:
        raise NotFound(err.message) from None
    return oauth


@endpoint(routes, "GET", "/oauth/{service}/start", summary="Start an OAuth2 authorisation (302 to the provider)",
          tag=TAG, scope="write", query=StartQuery, response=StartResult, status=302,
          problems=(NotFound, Conflict, Unavailable))
async def start(ctx: Ctx) -> web.Response:
    """Create the one-time state and PKCE pair, then redirect to the authorization server."""
    service = ctx.request.match_info["service"]
    credential_id = ctx.query_as(StartQuery).credential_id
    vault = vault_of(ctx)
    async with ctx.request.app[SESSIONS]() as session:
        await _oauth_template(session, service)
        credential = await session.get(Credential, credential_id)
        if credential is None or credential.service != service:
            raise NotFound(f"no {service} credential with id {credential_id}")
        principal = ctx.principal
        assert principal is not None
        if credential.user_id != principal.user_id and not principal.has("admin"):
            raise InsufficientScope("only the credential's owner or an admin may authorise it")
        try:
            started = await begin_flow(session, vault=vault, service=service, credential=credential,
                                       redirect=_redirect_uri(ctx, service),
                                       ttl_s=ctx.request.app[OPTIONS].oauth_state_ttl_seconds)
        except CredentialNotUsable as err:
            raise Conflict(err.message) from None
    body = StartResult(authorization_url=started.authorization_url, expires_at=started.expires_at.isoformat())
    return web.Response(status=302, body=body.model_dump_json().encode(), content_type="application/json",
                        headers={"Location": started.authorization_url, "Cache-Control": "no-store"})


@endpoint(routes, "GET", "/oauth/{service}/authorize", summary="Open an authorisation begun in chat (302)",
          tag=TAG, scope=None, query=AuthorizeQuery, response=StartResult, status=302,
          problems=(OAuthStateInvalid, NotFound, Conflict, Unavailable),
          description="The link `/connect` sends a chat user privately. No token: the one-time state "
                      "(unknown, expired or used ones are refused) names the stored flow, whose sealed PKCE "
                      "verifier rebuilds the authorization server's URL.")
async def authorize(ctx: Ctx) -> web.Response:
    """Redirect a chat user's browser to the authorization server for their stored flow."""
    service = ctx.request.match_info["service"]
    state = ctx.query_as(AuthorizeQuery).state
    vault = vault_of(ctx)
    async with ctx.request.app[SESSIONS]() as session:
        try:
            url = await resume_authorization_url(session, vault=vault, service=service, state=state)
        except FlowStateInvalid as err:
            raise OAuthStateInvalid(err.message) from None
        except NoOAuthTemplate as err:
            raise NotFound(err.message) from None
        except CredentialNotUsable as err:
            raise Conflict(err.message) from None
    return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


async def _consume(ctx: Ctx, service: str, state: str) -> OAuthState:
    """Mark the state used, atomically; a reused, expired, unknown or other-service state fails."""
    now = utcnow()
    async with ctx.request.app[SESSIONS]() as session:
        claimed = await session.execute(
            update(OAuthState)
            .where(OAuthState.state_hash == state_hash(state), OAuthState.consumed_at.is_(None),
                   OAuthState.expires_at > now, OAuthState.service == service)
            .values(consumed_at=now)
        )
        await session.commit()
        if getattr(claimed, "rowcount", 0) != 1:
            raise OAuthStateInvalid("the state is unknown, expired or already used; start the authorisation again")
        row = (await session.execute(
            select(OAuthState).where(OAuthState.state_hash == state_hash(state)))).scalar_one()
    return row


async def _exchange(*, oauth: dict[str, Any], client: dict[str, Any], code: str, verifier: str,
                    redirect_uri: str) -> dict[str, Any]:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier, "client_id": client["client_id"]}
    auth: httpx.Auth | httpx._client.UseClientDefault = httpx.USE_CLIENT_DEFAULT
    if client.get("client_secret"):
        if oauth.get("token_endpoint_auth_method") == "client_secret_basic":
            auth = httpx.BasicAuth(client["client_id"], client["client_secret"])
        else:
            form["client_secret"] = client["client_secret"]
    headers = {"Accept": "application/json", **(oauth.get("token_request_headers") or {})}
    try:
        async with httpx.AsyncClient(timeout=EXCHANGE_TIMEOUT_S, follow_redirects=False) as http:
            answer = await http.post(oauth["token_url"], data=form, headers=headers, auth=auth)
    except httpx.HTTPError as err:
        raise OAuthExchangeFailed(f"the token endpoint did not answer: {type(err).__name__}") from None
    try:
        tokens: dict[str, Any] = answer.json()
    except ValueError:
        raise OAuthExchangeFailed(f"the token endpoint answered HTTP {answer.status_code} without JSON") from None
    if answer.status_code != 200 or "access_token" not in tokens:
        reason = str(tokens.get("error", f"HTTP {answer.status_code}"))[:100]
        raise OAuthExchangeFailed(f"the token endpoint refused the code: {reason}")
    return tokens


@endpoint(routes, "GET", "/oauth/{service}/callback", summary="OAuth2 redirect target (state is the authentication)",
          tag=TAG, scope=None, query=CallbackQuery, raw_response="text/html",
          problems=(OAuthStateInvalid, OAuthIssuerMismatch, OAuthDenied, OAuthExchangeFailed))
async def callback(ctx: Ctx) -> web.Response:
    """Check state, issuer and PKCE (via the exchange), then seal the tokens into the credential."""
    service = ctx.request.match_info["service"]
    query = ctx.query_as(CallbackQuery)
    if not query.state:
        raise OAuthStateInvalid("the callback has no state")
    vault = vault_of(ctx)
    flow = await _consume(ctx, service, query.state)
    try:
        return await _complete(ctx, service, query, flow, vault)
    except ApiProblem as problem:  # expected: tell a chat that started this flow, then answer the browser
        ctx.request.app[BUS].publish(Event(topic="credential", kind="oauth_failed", payload={
            "flow_id": flow.id, "service": service, "user_id": flow.user_id, "reason": problem.detail[:300]}))
        raise


async def _complete(ctx: Ctx, service: str, query: CallbackQuery, flow: OAuthState, vault: Any) -> web.Response:
    """After the state is consumed: check the answer, exchange the code, seal the tokens."""
    assert query.state is not None
    if query.error:
        raise OAuthDenied(f"the authorization server answered {query.error[:100]!r}")
    if flow.issuer and query.iss != flow.issuer:
        _log.warning("oauth.issuer_mismatch", service=service, expected=flow.issuer)
        raise OAuthIssuerMismatch("the response names another issuer than the one this flow started with")
    if not query.code:
        raise OAuthDenied("the callback has no authorization code")
    async with ctx.request.app[SESSIONS]() as session:
        oauth = await _oauth_template(session, service)
        credential = await session.get(Credential, flow.credential_id) if flow.credential_id else None
        if credential is None:
            raise OAuthStateInvalid("the credential this flow was for no longer exists")
        client = open_secret(vault, credential)
        verifier = vault.open_text(flow.code_verifier_blob, table="oauth_states", column="code_verifier_blob",
                                   row_id=flow.id).get_secret_value()
    tokens = await _exchange(oauth=oauth, client=client, code=query.code, verifier=verifier,
                             redirect_uri=flow.redirect_uri)
    now = utcnow()
    async with ctx.request.app[SESSIONS]() as session:
        credential = await session.get(Credential, credential.id)
        if credential is None:
            raise OAuthStateInvalid("the credential this flow was for no longer exists")
        fields = {**client, "access_token": tokens["access_token"], "token_type": tokens.get("token_type", "bearer")}
        if tokens.get("refresh_token"):
            fields["refresh_token"] = tokens["refresh_token"]
        expires_in = tokens.get("expires_in")
        expires_at = now + timedelta(seconds=int(expires_in)) if isinstance(expires_in, int | float) else None
        if expires_at is not None:
            fields["expires_at"] = expires_at.isoformat()
        seal_secret(vault, credential, fields)
        credential.status, credential.status_detail = CredentialStatus.ACTIVE, "authorised through OAuth2"
        credential.expires_at, credential.last_validated_at = expires_at, now
        if isinstance(tokens.get("scope"), str):
            credential.scopes = tokens["scope"].replace(",", " ").split()
        await session.commit()
    ctx.request.app[BUS].publish(Event(topic="credential", kind="oauth_connected",
                                       payload={"credential_id": credential.id, "service": service,
                                                "user_id": credential.user_id, "flow_id": flow.id,
                                                "credential_name": credential.name}))
    notifier = ctx.request.app[SERVICES].notifier
    if notifier is not None:
        await notifier(user_id=credential.user_id, text=f"{service} is connected (credential {credential.name!r}).")
    _log.info("oauth.connected", service=service, credential_id=credential.id)
    return web.Response(text=_DONE_HTML.format(service=html.escape(service)), content_type="text/html",
                        headers={"Cache-Control": "no-store"})


_DONE_HTML = ("<!doctype html><meta charset='utf-8'><title>Connected</title>"
              "<p>{service} is connected. You can close this window.</p>")
