"""The auth matrix: no token, wrong scope, revoked/expired tokens, the CLI's tokens, rate limits, CORS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from admin_api import ApiOptions
from admin_api.auth import mint_token
from admin_api.openapi import operations
from bot.db.base import utcnow
from bot.db.models import ApiToken
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api, close_api, make_api

api, shared_db = harness.api, harness.shared_db

RANK = {"read": 0, "write": 1, "admin": 2}


def concrete(path: str) -> str:
    return path.replace("{id}", "1").replace("{service}", "github")


async def test_every_route_requires_a_token_with_its_scope(api: Api) -> None:
    declared = operations(api.client.app)
    assert len(declared) > 50
    public = {(op.method, op.path) for op in declared if op.scope is None}
    # Slack and Discord sign their requests; the adapters verify them (tests in test_platform_*).
    # The OAuth callback and /connect's authorize link carry a one-time state instead (test_connect).
    assert public == {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/docs"), ("GET", "/oauth/{service}/callback"),
                      ("GET", "/oauth/{service}/authorize"), ("POST", "/slack/events"),
                      ("POST", "/discord/interactions")}
    for op in declared:
        path = concrete(op.path)
        async with api.client.request(op.method, path) as response:
            if op.scope is None:
                assert response.status != 401, path
                continue
            assert response.status == 401, (op.method, path, response.status)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json(content_type=None))["type"].endswith("unauthenticated")
        for scope, rank in RANK.items():
            if rank >= RANK[op.scope]:
                continue
            status, problem, _ = await api.call(op.method, path, scope=scope)
            assert status == 403, (op.method, path, scope, status)
            assert problem["type"].endswith("insufficient-scope")
    # A higher scope is enough (admin implies write implies read).
    await api.call("GET", "/providers", scope="admin", expect=200)
    await api.call("GET", "/users", scope="write", expect=403)


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer orch_forged", "Bearer " + "x" * 5000, "Token orch_abc"],
)
async def test_malformed_or_unknown_credentials_are_401(api: Api, header: str) -> None:
    async with api.client.get("/providers", headers={"Authorization": header} if header else {}) as response:
        assert response.status == 401
        body = await response.json(content_type=None)
        assert body["status"] == 401
        if len(header) > 12:  # the submitted credential is never echoed back
            assert header.split(" ")[-1] not in json.dumps(body)


async def test_revoked_and_expired_tokens_stop_working(api: Api) -> None:
    _, created, _ = await api.call("POST", "/tokens", json={"name": "ci", "scopes": ["read"]}, expect=201)
    secret = created["token"]
    assert secret.startswith("orch_")
    assert "token" not in created["metadata"]
    headers = {"Authorization": f"Bearer {secret}"}
    async with api.client.get("/providers", headers=headers) as response:
        assert response.status == 200
    _, listed, _ = await api.call("GET", f"/tokens/{created['metadata']['id']}", expect=200)
    assert secret not in json.dumps(listed)
    assert listed["prefix"] == secret[:11]
    await api.call("POST", f"/tokens/{created['metadata']['id']}/revoke", expect=200)
    async with api.client.get("/providers", headers=headers) as response:
        assert response.status == 401
    await api.call("POST", f"/tokens/{created['metadata']['id']}/revoke", expect=409)
    async with api.sessions() as session:
        expiring = await mint_token(
            session, user_id=api.user_id, name="short", scopes=["read"], expires_in=timedelta(days=1)
        )
        await session.commit()
        await session.execute(
            update(ApiToken).where(ApiToken.id == expiring.id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    async with api.client.get("/providers", headers={"Authorization": f"Bearer {expiring.secret}"}) as response:
        assert response.status == 401


async def test_rate_limit_is_per_token(shared_db: str, tmp_path: Path) -> None:
    limited = await make_api(
        shared_db, tmp_path, options=ApiOptions(rate_per_second=0.5, burst=3, token_cache_seconds=0)
    )
    try:
        for _ in range(3):
            await limited.call("GET", "/providers", scope="read", expect=200)
        status, problem, headers = await limited.call("GET", "/providers", scope="read")
        assert status == 429
        assert problem["type"].endswith("rate-limited")
        assert int(headers["Retry-After"]) >= 1
        await limited.call("GET", "/providers", scope="write", expect=200)  # another token, its own bucket
        async with limited.client.get("/healthz") as response:
            assert response.status == 200
    finally:
        await close_api(limited)


async def test_cors_is_off_by_default_and_exact_when_configured(api: Api, shared_db: str, tmp_path: Path) -> None:
    _, _, headers = await api.call("GET", "/providers", headers={"Origin": "https://evil.example"}, expect=200)
    assert "Access-Control-Allow-Origin" not in headers
    async with api.client.options(
        "/providers", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    ) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    allowed = await make_api(shared_db, tmp_path, options=ApiOptions(cors_origins=("https://admin.example",)))
    try:
        async with allowed.client.options(
            "/providers", headers={"Origin": "https://admin.example", "Access-Control-Request-Method": "GET"}
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "https://admin.example"
        _, _, headers = await allowed.call("GET", "/providers", headers={"Origin": "https://other.example"})
        assert "Access-Control-Allow-Origin" not in headers
    finally:
        await close_api(allowed)


def _cli(args: list[str], database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ORCH_")}
    env.update(ORCH_DATABASE_URL=database_url, ORCH_DATA_DIR=str(tmp_path), XDG_DATA_HOME=str(tmp_path))
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


async def test_cli_tokens_create_list_revoke(api: Api, shared_db: str, tmp_path: Path) -> None:
    created = _cli(["tokens", "create", "--name", "deploy", "--scopes", "read,write", "--json"], shared_db, tmp_path)
    assert created.returncode == 0, created.stderr
    minted = json.loads(created.stdout)
    assert minted["scopes"] == ["read", "write"]
    headers = {"Authorization": f"Bearer {minted['token']}"}
    async with api.client.get("/providers", headers=headers) as response:
        assert response.status == 200
    async with api.client.get("/users", headers=headers) as response:
        assert response.status == 403
    listed = _cli(["tokens", "list", "--json"], shared_db, tmp_path)
    assert listed.returncode == 0
    assert minted["token"] not in listed.stdout
    assert any(row["id"] == minted["id"] for row in json.loads(listed.stdout))
    bad = _cli(["tokens", "create", "--name", "x", "--scopes", "read,root"], shared_db, tmp_path)
    assert bad.returncode == 2
    assert "scopes" in bad.stderr
    revoked = _cli(["tokens", "revoke", str(minted["id"])], shared_db, tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    async with api.client.get("/providers", headers=headers) as response:
        assert response.status == 401
    missing = _cli(["tokens", "revoke", "999999"], shared_db, tmp_path)
    assert missing.returncode == 2


async def test_concurrent_misses_share_one_lookup_and_a_revocation_is_not_cached(api: Api) -> None:
    """64 requests in flight when a token's cache entry lapses query the table once, not 64 times."""
    import asyncio

    from sqlalchemy import event

    from admin_api.auth import TokenAuthenticator

    async with api.sessions() as session:
        minted = await mint_token(session, user_id=api.user_id, name="busy", scopes=["read"])
        await session.commit()
    lookups = 0

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        nonlocal lookups
        if statement.lstrip().upper().startswith("SELECT") and "api_tokens" in statement:
            lookups += 1

    event.listen(api.engine.sync_engine, "before_cursor_execute", count)
    try:
        auth = TokenAuthenticator(session_factory=api.sessions, cache_seconds=30)
        found = await asyncio.gather(*(auth.authenticate(minted.secret) for _ in range(64)))
        assert lookups == 1
        assert {p.token_id for p in found if p is not None} == {minted.id} and None not in found
        assert auth.cached(minted.secret) is not None  # and the answer was cached

        # A waiter that gives up does not take the others' lookup with it.
        auth.forget(minted.id)
        first = asyncio.ensure_future(auth.authenticate(minted.secret))
        second = asyncio.ensure_future(auth.authenticate(minted.secret))
        await asyncio.sleep(0)
        first.cancel()
        principal = await second
        assert principal is not None and principal.token_id == minted.id and lookups == 2

        # forget() during a lookup: the lookup's answer is not cached, and later callers look again.
        auth.forget(minted.id)
        before = asyncio.ensure_future(auth.authenticate(minted.secret))
        await asyncio.sleep(0)
        auth.forget(minted.id)
        assert await before is not None
        assert auth.cached(minted.secret) is None
        assert await auth.authenticate(minted.secret) is not None and lookups == 4
    finally:
        event.remove(api.engine.sync_engine, "before_cursor_execute", count)
