"""/connect from chat against the real admin API and a local OAuth server: the private link works end
to end, forged/expired/reused states are refused, unauthorised people are refused, and a secret
pasted in chat is never echoed or recorded (SQLite and MariaDB)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from sqlalchemy import select, update

from admin_api.resources.credentials import open_secret
from bot.commands.wiring import build_dispatcher
from bot.db.base import utcnow
from bot.db.models import (
    AuditLog,
    AuthType,
    Credential,
    CredentialTemplate,
    OAuthState,
    User,
    UserIdentity,
    UserRole,
)
from bot.platforms.console import ConsolePlatform
from bot.settings import Settings
from tests.fakes.oauth_server import FakeOAuthServer
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api, close_api, make_api

shared_db = harness.shared_db


class Setup:
    def __init__(self, api: Api, server: FakeOAuthServer, service: str, key_service: str, tmp: Path) -> None:
        self.api, self.server, self.service, self.key_service, self.tmp = api, server, service, key_service, tmp
        self.base = str(api.client.make_url("/")).rstrip("/")
        settings = Settings(data_dir=tmp, admin_api={"public_url": self.base})
        _registry, self.dispatcher = build_dispatcher(settings=settings, sessions=api.sessions,
                                                      components={"vault": api.vault, "bus": api.bus})
        self.consoles: list[ConsolePlatform] = []

    async def person(self, role: UserRole) -> str:
        """A user with `role` linked to a fresh console id; returns that id."""
        console_id = f"c-{uuid.uuid4().hex[:8]}"
        async with self.api.sessions() as session:
            user = User(username=console_id, role=role)
            session.add(user)
            await session.flush()
            session.add(UserIdentity(user_id=user.id, platform="console", platform_user_id=console_id))
            await session.commit()
        return console_id

    async def console(self, console_id: str) -> ConsolePlatform:
        console = ConsolePlatform(sink=self.dispatcher.handle_event, user_id=console_id,
                                  files_dir=self.tmp / "files")
        await console.start()
        self.consoles.append(console)
        return console


@pytest.fixture
async def setup(shared_db: str, tmp_path: Path) -> AsyncIterator[Setup]:
    server = FakeOAuthServer()
    await server.start()
    api = await make_api(shared_db, tmp_path)
    service, key_service = f"fake{uuid.uuid4().hex[:6]}", f"keyed{uuid.uuid4().hex[:6]}"
    async with api.sessions() as session:
        session.add(CredentialTemplate(
            service=service, display_name="Fake Hub", auth_type=AuthType.OAUTH2,
            fields_schema={"type": "object", "properties": {"client_id": {"type": "string"},
                                                            "client_secret": {"type": "string"}}},
            oauth={"authorize_url": f"{server.base_url}/authorize", "token_url": f"{server.base_url}/token",
                   "issuer": server.issuer, "scopes": ["repo"], "pkce": True,
                   "token_endpoint_auth_method": "client_secret_post"},
        ))
        session.add(CredentialTemplate(
            service=key_service, display_name="Keyed", auth_type=AuthType.API_KEY, oauth=None,
            fields_schema={"type": "object", "properties": {"api_key": {"type": "string"}}},
            docs_url="https://keyed.example/keys",
        ))
        await session.commit()
    running = Setup(api, server, service, key_service, tmp_path)
    try:
        yield running
    finally:
        for console in running.consoles:
            await console.stop()
        await close_api(api)
        await server.stop()


async def admin_console(setup: Setup) -> tuple[ConsolePlatform, str]:
    """The API's admin user (who owns the OAuth client credential) at a console."""
    console_id = f"admin-{uuid.uuid4().hex[:6]}"
    async with setup.api.sessions() as session:
        session.add(UserIdentity(user_id=setup.api.user_id, platform="console", platform_user_id=console_id))
        await session.commit()
    return await setup.console(console_id), console_id


async def client_credential(setup: Setup) -> int:
    _, row, _ = await setup.api.call("POST", "/credentials", json={
        "name": f"hub-{uuid.uuid4().hex[:6]}", "service": setup.service,
        "secret": {"client_id": setup.server.client_id, "client_secret": setup.server.client_secret}}, expect=201)
    return int(row["id"])


def link_in(console: ConsolePlatform) -> str:
    texts = [m.text for m in console.messages if "/authorize?state=" in m.text]
    assert len(texts) == 1, [m.text for m in console.messages]
    return texts[0].rsplit(" ", 1)[-1]


async def wait_for_text(console: ConsolePlatform, needle: str, *, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not any(needle in m.text for m in console.messages):
        assert time.monotonic() < deadline, [m.text for m in console.messages]
        await asyncio.sleep(0.02)


async def oauth_rows(setup: Setup) -> list[OAuthState]:
    async with setup.api.sessions() as session:
        return list((await session.scalars(select(OAuthState).where(OAuthState.service == setup.service))).all())


async def test_the_link_from_connect_authorises_and_the_chat_is_told(setup: Setup) -> None:
    console, _ = await admin_console(setup)
    credential_id = await client_credential(setup)
    replies = await console.submit(f"/connect {setup.service}")
    assert any("private link" in r for r in replies)
    link = link_in(console)
    assert link.startswith(f"{setup.base}/oauth/{setup.service}/authorize?state=")
    state = parse_qs(urlsplit(link).query)["state"][0]
    async with aiohttp.ClientSession() as browser:
        async with browser.get(link, allow_redirects=False) as answer:  # our API → the provider
            assert answer.status == 302
            provider = answer.headers["Location"]
        query = parse_qs(urlsplit(provider).query)
        assert provider.startswith(setup.server.base_url) and query["state"] == [state]
        assert query["code_challenge_method"] == ["S256"]
        assert query["redirect_uri"] == [f"{setup.base}/oauth/{setup.service}/callback"]
        async with browser.get(provider, allow_redirects=False) as answer:  # the provider → our callback
            callback = answer.headers["Location"]
        async with browser.get(callback) as answer:
            assert answer.status == 200
            assert "connected" in await answer.text()
        await wait_for_text(console, "Fake Hub is connected")
        async with setup.api.sessions() as session:
            credential = await session.get(Credential, credential_id)
            assert credential is not None and credential.status.value == "active"
            assert open_secret(setup.api.vault, credential)["access_token"] == setup.server.issued_tokens[0]
        (flow,) = await oauth_rows(setup)
        assert flow.consumed_at is not None and state not in flow.state_hash
        # The same link, or the same callback, a second time: refused, nothing changes.
        async with browser.get(link, allow_redirects=False) as answer:
            assert answer.status == 400
            assert (await answer.json(content_type=None))["type"].endswith("oauth-state-invalid")
        async with browser.get(callback) as answer:
            assert answer.status == 400
    assert len(setup.server.requests_to("/token")) == 1
    for message in console.messages:  # tokens and the client secret never reach the chat
        for secret in (*setup.server.issued_tokens, setup.server.client_secret):
            assert secret not in message.text


async def test_forged_and_expired_links_are_refused_and_the_chat_hears_of_a_failure(setup: Setup) -> None:
    console, _ = await admin_console(setup)
    await client_credential(setup)
    async with aiohttp.ClientSession() as browser:
        forged = f"{setup.base}/oauth/{setup.service}/authorize?state={'A' * 43}"
        async with browser.get(forged, allow_redirects=False) as answer:
            assert answer.status == 400
        async with browser.get(f"{setup.base}/oauth/{setup.service}/authorize", allow_redirects=False) as answer:
            assert answer.status in (400, 422)  # no state at all
        await console.submit(f"/connect {setup.service}")
        link = link_in(console)
        other_service = link.replace(f"/oauth/{setup.service}/", "/oauth/github/")
        async with browser.get(other_service, allow_redirects=False) as answer:
            assert answer.status in (400, 404)
        async with setup.api.sessions() as session:
            await session.execute(update(OAuthState).where(OAuthState.service == setup.service)
                                  .values(expires_at=utcnow() - timedelta(seconds=1)))
            await session.commit()
        async with browser.get(link, allow_redirects=False) as answer:
            assert answer.status == 400
        # A fresh link whose provider answer is a refusal: the chat is told it did not work.
        await console.submit(f"/connect {setup.service}")
        fresh = [m.text for m in console.messages if "/authorize?state=" in m.text][-1].rsplit(" ", 1)[-1]
        state = parse_qs(urlsplit(fresh).query)["state"][0]
        denied = f"{setup.base}/oauth/{setup.service}/callback"
        params = {"state": state, "error": "access_denied", "iss": setup.server.issuer}
        async with browser.get(denied, params=params) as answer:
            assert answer.status == 400
    await wait_for_text(console, "did not work")


async def test_unknown_and_under_privileged_people_are_refused(setup: Setup) -> None:
    await client_credential(setup)
    stranger = await setup.console("nobody-linked")
    viewer = await setup.console(await setup.person(UserRole.VIEWER))
    assert any("don't know you" in r for r in await stranger.submit(f"/connect {setup.service}"))
    assert any("needs the operator role" in r for r in await viewer.submit(f"/connect {setup.service}"))
    assert await oauth_rows(setup) == []


async def test_secrets_in_chat_are_refused_never_echoed_nor_audited(setup: Setup) -> None:
    operator_id = await setup.person(UserRole.OPERATOR)
    console = await setup.console(operator_id)
    secrets = ["ghp_16C7e42F292c6912E7710c838347Ae178B4a", "sk-proj-Abc123Def456Ghi789Jkl012",
               "api_key=hunter2hunter2", "Zx9Qw8Er7Ty6Ui5Op4As3Df2"]
    for secret in secrets:
        for line in (f"/connect {secret}", f"/connect {setup.key_service} {secret}"):
            replies = await console.submit(line)
            joined = "\n".join(replies)
            assert "looks like a key or token" in joined, joined
            assert secret not in joined and secret.split("=")[-1] not in joined
    async with setup.api.sessions() as session:
        rows = (await session.scalars(select(AuditLog).where(AuditLog.action == "command.connect"))).all()
    dumped = json.dumps([row.detail for row in rows])
    assert any(row.detail.get("args") == "(not recorded)" for row in rows)
    assert all(row.detail.get("args") in (None, "(not recorded)") for row in rows)  # None: refused before parsing
    for secret in secrets:
        assert secret.split("=")[-1] not in dumped
    # An API-key service is explained (where to store the key), with no link and nothing stored.
    explained = "\n".join(await console.submit(f"/connect {setup.key_service}"))
    assert f"{setup.base}/credentials" in explained and "api_key" in explained and "keyed.example" in explained
    assert "/authorize?state=" not in explained


async def test_without_an_oauth_client_the_person_is_told_what_to_store(setup: Setup) -> None:
    console = await setup.console(await setup.person(UserRole.OPERATOR))
    replies = "\n".join(await console.submit(f"/connect {setup.service}"))
    assert "client_id" in replies and f"{setup.base}/oauth/{setup.service}/callback" in replies
    replies = "\n".join(await console.submit("/connect no-such-service"))
    assert "There is no service “no-such-service”" in replies and setup.service in replies
    replies = "\n".join(await console.submit("/connect Bad/Name"))
    assert "lowercase" in replies and "Usage: /connect" in replies
    assert await oauth_rows(setup) == []


async def test_pt_br_person_reads_the_link_in_portuguese(setup: Setup) -> None:
    console, _ = await admin_console(setup)
    await client_credential(setup)
    async with setup.api.sessions() as session:
        await session.execute(update(User).where(User.id == setup.api.user_id).values(language="pt-BR"))
        await session.commit()
    try:
        replies = "\n".join(await console.submit(f"/connect {setup.service}"))
        assert "link privado" in replies and "/authorize?state=" in replies
    finally:
        async with setup.api.sessions() as session:
            await session.execute(update(User).where(User.id == setup.api.user_id).values(language="en"))
            await session.commit()
