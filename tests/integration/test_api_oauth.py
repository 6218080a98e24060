"""OAuth2 with PKCE against a real local authorization server; every failure stores nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from sqlalchemy import select, update

from admin_api.resources.credentials import open_secret
from bot.db.models import AuthType, Credential, CredentialTemplate, OAuthState
from tests.fakes.oauth_server import FakeOAuthServer
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api, close_api, make_api

shared_db = harness.shared_db


@pytest.fixture
async def oauth_api(
    shared_db: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Api, FakeOAuthServer, list[dict[str, Any]], str]]:
    server = FakeOAuthServer()
    await server.start()
    told: list[dict[str, Any]] = []

    async def notifier(*, user_id: int, text: str) -> None:  # the chat front's seam: record what it was asked
        told.append({"user_id": user_id, "text": text})

    api = await make_api(shared_db, tmp_path_factory.getbasetemp(), services={"notifier": notifier})
    service = f"fake{uuid.uuid4().hex[:6]}"
    async with api.sessions() as session:
        session.add(CredentialTemplate(
            service=service, display_name="Fake", auth_type=AuthType.OAUTH2,
            fields_schema={"type": "object", "properties": {"client_id": {"type": "string"},
                                                            "client_secret": {"type": "string"}},
                           "required": ["client_id"]},
            oauth={"authorize_url": f"{server.base_url}/authorize", "token_url": f"{server.base_url}/token",
                   "issuer": server.issuer, "scopes": ["repo", "read:user"], "pkce": True,
                   "token_endpoint_auth_method": "client_secret_post"},
        ))
        await session.commit()
    try:
        yield api, server, told, service
    finally:
        await close_api(api)
        await server.stop()


async def _credential(api: Api, server: FakeOAuthServer, service: str) -> int:
    _, row, _ = await api.call("POST", "/credentials", json={
        "name": f"oauth-{uuid.uuid4().hex[:6]}", "service": service,
        "secret": {"client_id": server.client_id, "client_secret": server.client_secret}}, expect=201)
    return int(row["id"])


async def _authorize(api: Api, credential_id: int, service: str) -> str:
    """Start the flow and follow the AS's redirect; return our callback URL (not yet visited)."""
    status, body, headers = await api.call("GET", f"/oauth/{service}/start?credential_id={credential_id}",
                                           scope="write")
    assert status == 302
    assert body["authorization_url"] == headers["Location"]
    query = parse_qs(urlsplit(headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["state"][0]) >= 43
    assert query["redirect_uri"][0].endswith(f"/oauth/{service}/callback")
    assert query["scope"] == ["repo read:user"]
    async with aiohttp.ClientSession() as browser, browser.get(headers["Location"], allow_redirects=False) as answer:
        assert answer.status == 302
        return answer.headers["Location"]


def _path(callback_url: str) -> str:
    parts = urlsplit(callback_url)
    return f"{parts.path}?{parts.query}"


async def _stored(api: Api, credential_id: int) -> tuple[str, dict[str, Any]]:
    async with api.sessions() as session:
        row = await session.get(Credential, credential_id)
        assert row is not None
        return row.status.value, open_secret(api.vault, row)


async def test_full_flow_stores_sealed_tokens_and_tells_the_user(oauth_api: Any) -> None:
    api, server, told, service = oauth_api
    credential_id = await _credential(api, server, service)
    callback = await _authorize(api, credential_id, service)
    async with api.client.get(_path(callback)) as response:  # no token: the state authenticates
        assert response.status == 200
        assert "connected" in await response.text()
    status, secret = await _stored(api, credential_id)
    assert status == "active"
    assert secret["access_token"] == server.issued_tokens[0]
    assert secret["refresh_token"] == server.issued_tokens[1]
    token_request = server.requests_to("/token")[0]
    assert len(token_request["code_verifier"]) >= 43
    async with api.sessions() as session:
        raw = (await session.execute(select(Credential.secret_blob).where(Credential.id == credential_id))).scalar_one()
        flow = (await session.execute(select(OAuthState).order_by(OAuthState.id.desc()).limit(1))).scalar_one()
    assert server.issued_tokens[0].encode() not in raw
    assert token_request["code_verifier"].encode() not in flow.code_verifier_blob
    assert flow.consumed_at is not None
    assert parse_qs(urlsplit(callback).query)["state"][0] not in flow.state_hash
    assert told == [{"user_id": api.user_id, "text": told[0]["text"]}]
    assert service in told[0]["text"]
    # Secrets never appear in any response.
    for path in (f"/credentials/{credential_id}", "/credentials?limit=200", f"/credentials?service={service}"):
        _, body, _ = await api.call("GET", path, expect=200)
        dumped = json.dumps(body)
        for secret_value in (*server.issued_tokens, server.client_secret):
            assert secret_value not in dumped
    # Reusing the callback (same state and code) is refused and changes nothing.
    async with api.client.get(_path(callback)) as response:
        problem = await response.json(content_type=None)
        assert response.status == 400
        assert problem["type"].endswith("oauth-state-invalid")
    assert await _stored(api, credential_id) == ("active", secret)
    assert len(server.requests_to("/token")) == 1


@pytest.mark.parametrize("tamper", ["missing", "forged", "wrong_issuer", "no_issuer", "other_service"])
async def test_bad_state_or_issuer_stores_nothing(oauth_api: Any, tamper: str) -> None:
    api, server, _, service = oauth_api
    credential_id = await _credential(api, server, service)
    before = await _stored(api, credential_id)
    callback = await _authorize(api, credential_id, service)
    query = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
    path = f"/oauth/{service}/callback"
    if tamper == "missing":
        query.pop("state")
    elif tamper == "forged":
        query["state"] = "A" * 43
    elif tamper == "wrong_issuer":
        query["iss"] = "https://attacker.example"
    elif tamper == "no_issuer":
        query.pop("iss")
    else:
        path = "/oauth/github/callback"
    async with api.client.get(path, params=query) as response:
        problem = await response.json(content_type=None)
    expected = "oauth-issuer-mismatch" if "issuer" in tamper else "oauth-state-invalid"
    assert response.status == 400, problem
    assert problem["type"].endswith(expected), problem
    assert server.requests_to("/token") == []  # the code was never exchanged
    assert await _stored(api, credential_id) == before


async def test_wrong_pkce_verifier_is_refused_by_the_server_and_stores_nothing(oauth_api: Any) -> None:
    api, server, told, service = oauth_api
    credential_id = await _credential(api, server, service)
    before = await _stored(api, credential_id)
    callback = await _authorize(api, credential_id, service)
    async with api.sessions() as session:
        flow = (await session.execute(select(OAuthState).order_by(OAuthState.id.desc()).limit(1))).scalar_one()
        wrong = api.vault.seal("w" * 64, table="oauth_states", column="code_verifier_blob", row_id=flow.id)
        await session.execute(update(OAuthState).where(OAuthState.id == flow.id).values(code_verifier_blob=wrong))
        await session.commit()
    async with api.client.get(_path(callback)) as response:
        problem = await response.json(content_type=None)
    assert response.status == 502
    assert problem["type"].endswith("oauth-exchange-failed")
    assert "invalid_grant" in problem["detail"]
    assert server.requests_to("/token")[0]["code_verifier"] == "w" * 64
    assert await _stored(api, credential_id) == before
    assert told == []


async def test_start_needs_auth_a_client_id_and_a_known_service(oauth_api: Any, tmp_path: Path) -> None:
    api, server, _, service = oauth_api
    credential_id = await _credential(api, server, service)
    start = f"/oauth/{service}/start?credential_id={credential_id}"
    async with api.client.get(start, allow_redirects=False) as response:
        assert response.status == 401
    await api.call("GET", f"/oauth/{service}/start?credential_id={credential_id}", scope="read", expect=403)
    await api.call("GET", f"/oauth/nosuchservice/start?credential_id={credential_id}", scope="write", expect=404)
    await api.call("GET", f"/oauth/{service}/start?credential_id=99999999", scope="write", expect=404)
    await api.call("GET", f"/oauth/{service}/start", scope="write", expect=422)
