"""Knowledge sources fetched with their linked credential (SQLite and MariaDB).

A local site serves pages that answer 401 without the right header; what crossed the socket is
checked on the site's side. The secret is stored through the API (sealed by the vault) and must
never come back in a response, a problem, the source's row or a log line.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from admin_api.auth import mint_token
from bot.db.base import utcnow
from bot.db.models import Credential, CredentialStatus, User, UserRole
from bot.logs import configure_logging
from tests.fakes.web_pages import WebPages
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api

shared_db = harness.shared_db
TOKEN = "kb-tok-" + uuid.uuid4().hex
PASSWORD = "pw-" + uuid.uuid4().hex
API_KEY = "key-" + uuid.uuid4().hex
SECRETS = (TOKEN, PASSWORD, API_KEY)


@pytest.fixture
async def site() -> AsyncIterator[WebPages]:
    async with WebPages() as pages:
        yield pages


@pytest.fixture
async def elsewhere() -> AsyncIterator[WebPages]:
    async with WebPages() as pages:
        yield pages


@pytest.fixture
async def api(shared_db: str, tmp_path: Path) -> AsyncIterator[Api]:
    overrides = {"knowledge": {"allowed_private_networks": ["127.0.0.0/8"], "fetch_timeout_s": 5,
                               "allowed_roots": [str(tmp_path)]}}
    running = await harness.make_api(shared_db, tmp_path, settings_overrides=overrides)
    try:
        yield running
    finally:
        await harness.close_api(running)


async def _credential(api: Api, secret: dict[str, str], *, metadata: dict[str, Any] | None = None) -> int:
    _, row, _ = await api.call("POST", "/credentials", expect=201, json={
        "name": f"web-{uuid.uuid4().hex[:8]}", "service": "intranet", "secret": secret,
        "metadata": metadata or {}})
    return int(row["id"])


async def _source(api: Api, uri: str, credential_id: int | None, **extra: Any) -> int:
    _, row, _ = await api.call("POST", "/knowledge-sources", scope="write", expect=201, json={
        "name": f"src-{uuid.uuid4().hex[:10]}", "kind": extra.pop("kind", "url"), "uri": uri,
        "credential_id": credential_id, **extra})
    return int(row["id"])


async def _sync(api: Api, source_id: int) -> tuple[int, Any]:
    code, body, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write")
    return code, body


def _no_secret(*documents: Any) -> None:
    text = json.dumps(documents, default=str)
    for secret in SECRETS:
        assert secret not in text


def _sent(site: WebPages, path: str, header: str) -> list[str | None]:
    return [headers.get(header) for seen, headers in site.received if seen == path]


async def test_bearer_token_opens_a_protected_page_and_is_never_echoed(api: Api, site: WebPages) -> None:
    word = f"zq{uuid.uuid4().hex[:8]}"
    site.page("/private.md", f"# Private\n\n{word}", content_type="text/markdown",
              require={"Authorization": f"Bearer {TOKEN}"})
    log = io.StringIO()
    configure_logging(level="DEBUG", fmt="json", stream=log)
    try:
        bare = await _source(api, f"{site.url}/private.md", None)
        code, problem = await _sync(api, bare)
        assert code == 502 and "HTTP 401" in problem["detail"]

        credential_id = await _credential(api, {"token": TOKEN})
        source_id = await _source(api, f"{site.url}/private.md", credential_id)
        code, result = await _sync(api, source_id)
        assert code == 200, result
        assert result["added"] == 1 and result["source"]["credential_id"] == credential_id
        _, entries, _ = await api.call("GET", "/knowledge", params={"source_id": source_id}, expect=200)
        assert word in entries["items"][0]["content"]
        assert _sent(site, "/private.md", "Authorization")[-1] == f"Bearer {TOKEN}"

        # The site stops accepting the token: the refusal names the credential, never its value.
        site.page("/private.md", "# Private", require={"Authorization": "Bearer another"})
        code, problem = await _sync(api, source_id)
        assert code == 502 and f"refused credential {credential_id}" in problem["detail"]
        _, source, _ = await api.call("GET", f"/knowledge-sources/{source_id}", expect=200)
        _, credential, _ = await api.call("GET", f"/credentials/{credential_id}", expect=200)
        _no_secret(result, problem, source, credential, entries)
    finally:
        configure_logging(level="WARNING", fmt="json")
    assert "knowledge.sync" in log.getvalue()  # the sync did log, and no line carries the secret
    _no_secret(log.getvalue())


async def test_basic_auth_and_a_custom_header(api: Api, site: WebPages) -> None:
    pair = base64.b64encode(f"ana:{PASSWORD}".encode()).decode()
    site.page("/basic.txt", "basic words", require={"Authorization": f"Basic {pair}"})
    basic = await _credential(api, {"username": "ana", "password": PASSWORD})
    code, result = await _sync(api, await _source(api, f"{site.url}/basic.txt", basic))
    assert code == 200, result

    site.page("/keyed.txt", "keyed words", require={"X-API-Key": API_KEY})
    keyed = await _credential(api, {"api_key": API_KEY}, metadata={"header_name": "X-API-Key"})
    code, result = await _sync(api, await _source(api, f"{site.url}/keyed.txt", keyed))
    assert code == 200, result
    assert _sent(site, "/keyed.txt", "Authorization") == [None]  # only the named header carries it
    _no_secret(result)

    for metadata in ({"header_name": "Host"}, {"header_name": "bad header\r\nX: y"}):
        broken = await _credential(api, {"api_key": API_KEY}, metadata=metadata)
        code, problem = await _sync(api, await _source(api, f"{site.url}/keyed.txt", broken))
        assert code == 409 and "header" in problem["detail"], problem
        _no_secret(problem)


async def test_redirects_keep_the_credential_on_its_origin_only(
    api: Api, site: WebPages, elsewhere: WebPages,
) -> None:
    site.page("/private.md", "# Moved here", content_type="text/markdown",
              require={"Authorization": f"Bearer {TOKEN}"})
    site.redirect("/old", "/private.md")
    elsewhere.page("/landing.txt", "landing words")
    site.redirect("/away", f"{elsewhere.url}/landing.txt")
    elsewhere.redirect("/back", f"{site.url}/private.md")
    site.redirect("/out-and-back", f"{elsewhere.url}/back")
    bearer = await _credential(api, {"token": TOKEN})
    keyed = await _credential(api, {"api_key": API_KEY}, metadata={"header_name": "X-API-Key"})

    code, result = await _sync(api, await _source(api, f"{site.url}/old", bearer))
    assert code == 200, result  # same origin: the header follows the redirect
    assert _sent(site, "/old", "Authorization") == [f"Bearer {TOKEN}"]

    for credential_id, header in ((bearer, "Authorization"), (keyed, "X-API-Key")):
        code, result = await _sync(api, await _source(api, f"{site.url}/away", credential_id))
        assert code == 200, result  # the other origin's page is public
        assert _sent(site, "/away", header)[-1] is not None
        assert _sent(elsewhere, "/landing.txt", header)[-1] is None
    assert all(TOKEN not in json.dumps(headers) and API_KEY not in json.dumps(headers)
               for _, headers in elsewhere.received)

    # Once dropped, the header is not sent again even when a later hop returns to the origin.
    code, problem = await _sync(api, await _source(api, f"{site.url}/out-and-back", bearer))
    assert code == 502 and "HTTP 401" in problem["detail"]
    assert _sent(site, "/private.md", "Authorization")[-1] is None


async def _other_user(api: Api) -> tuple[int, str, int]:
    """Another (non-admin) user with a write token and a credential of their own."""
    async with api.sessions() as session:
        user = User(username=f"bob-{uuid.uuid4().hex[:8]}", display_name="Bob", role=UserRole.OPERATOR)
        session.add(user)
        await session.flush()
        credential = Credential(user_id=user.id, name="bob-web", service="intranet", secret_blob=b"",
                                status=CredentialStatus.ACTIVE)
        session.add(credential)
        await session.flush()
        credential.secret_blob = api.vault.seal(json.dumps({"token": TOKEN}), table="credentials",
                                                column="secret_blob", row_id=credential.id)
        token = (await mint_token(session, user_id=user.id, name="bob", scopes=["write"])).secret
        await session.commit()
        return user.id, token, credential.id


async def test_only_the_credential_owner_decides_where_it_is_sent(api: Api, site: WebPages) -> None:
    site.page("/private.md", "# Private", content_type="text/markdown", require={"Authorization": f"Bearer {TOKEN}"})
    _, bob_token, bobs_credential = await _other_user(api)
    bob = {"Authorization": f"Bearer {bob_token}"}

    # The admin cannot link Bob's credential, on create or on update.
    code, problem, _ = await api.call("POST", "/knowledge-sources", scope="write", json={
        "name": f"src-{uuid.uuid4().hex[:8]}", "kind": "url", "uri": f"{site.url}/private.md",
        "credential_id": bobs_credential})
    assert code == 422 and "belongs to another user" in problem["detail"]
    plain = await _source(api, f"{site.url}/private.md", None)
    code, problem, _ = await api.call("PATCH", f"/knowledge-sources/{plain}", scope="write",
                                      json={"credential_id": bobs_credential})
    assert code == 422 and problem["errors"][0]["loc"] == ["body", "credential_id"]

    # Bob cannot point the admin's credential at a host of his choosing, but may unlink it.
    mine = await _source(api, f"{site.url}/private.md", await _credential(api, {"token": TOKEN}))
    async with api.client.patch(f"/knowledge-sources/{mine}", headers=bob,
                                json={"uri": "http://127.0.0.1:9/collect"}) as response:
        problem = await response.json(content_type=None)
        assert response.status == 422 and problem["errors"][0]["loc"] == ["body", "uri"]
    async with api.client.patch(f"/knowledge-sources/{mine}", headers=bob, json={"credential_id": None}) as response:
        assert response.status == 200
    # Bob links his own credential to his own source.
    async with api.client.post("/knowledge-sources", headers=bob, json={
            "name": f"bob-{uuid.uuid4().hex[:8]}", "kind": "url", "uri": f"{site.url}/private.md",
            "credential_id": bobs_credential}) as response:
        assert response.status == 201
    _no_secret(problem)


async def test_unusable_credentials_refuse_the_sync(api: Api, site: WebPages, tmp_path: Path) -> None:
    site.page("/doc.txt", "words")
    revoked = await _credential(api, {"token": TOKEN})
    await api.call("PATCH", f"/credentials/{revoked}", json={"revoked": True}, expect=200)
    no_token = await _credential(api, {"client_id": "only-an-id"})
    expired = await _credential(api, {"token": TOKEN})
    async with api.sessions() as session:
        row = await session.get(Credential, expired)
        assert row is not None
        row.expires_at = utcnow().replace(year=2000)
        await session.commit()
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [(f"{site.url}/doc.txt", revoked, "url", "revoked"), (f"{site.url}/doc.txt", no_token, "url", "token"),
             (f"{site.url}/doc.txt", expired, "url", "expired"),
             (str(folder), await _credential(api, {"token": TOKEN}), "directory", "only url")]
    for uri, credential_id, kind, words in cases:
        source_id = await _source(api, uri, credential_id, kind=kind)
        code, problem = await _sync(api, source_id)
        assert code == 409 and words in problem["detail"], (words, problem)
        _, source, _ = await api.call("GET", f"/knowledge-sources/{source_id}", expect=200)
        assert source["sync_status"] == "failed" and words in source["sync_error"]
        _no_secret(problem, source)
    assert site.requests == []  # nothing was fetched with a credential that could not be used
