"""Credit sync of external API accounts against wire fakes of OpenRouter and OpenAI (SQLite, MariaDB).

The key is stored through the API as a vault-sealed credential and must never come back in any
response, problem or account field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.billing import FakeOpenAICosts, FakeOpenRouter
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api

shared_db = harness.shared_db
OR_KEY = "sk-or-v1-" + "a1b2c3d4" * 8
OA_KEY = "sk-admin-" + "z9y8x7w6" * 6


@pytest.fixture
async def peers() -> AsyncIterator[tuple[FakeOpenRouter, FakeOpenAICosts]]:
    async with FakeOpenRouter(key=OR_KEY) as openrouter, \
            FakeOpenAICosts(key=OA_KEY, daily=[0.06, 1.25, 0.5, 2.0, 0.19]) as openai:
        yield openrouter, openai


@pytest.fixture
async def api(shared_db: str, tmp_path: Path, peers: tuple[FakeOpenRouter, FakeOpenAICosts]) -> AsyncIterator[Api]:
    openrouter, openai = peers
    overrides = {"credits": {"base_urls": {"openrouter": openrouter.base_url, "openai": openai.base_url}}}
    running = await harness.make_api(shared_db, tmp_path, settings_overrides=overrides)
    try:
        yield running
    finally:
        await harness.close_api(running)


async def _account(api: Api, service: str, secret: dict[str, str] | None) -> int:
    credential_id = None
    if secret is not None:
        _, credential, _ = await api.call("POST", "/credentials", expect=201, json={
            "name": f"cred-{uuid.uuid4().hex[:8]}", "service": service, "secret": secret})
        credential_id = credential["id"]
    _, account, _ = await api.call("POST", "/external-accounts", scope="write", expect=201, json={
        "service": service, "account_name": f"acct-{uuid.uuid4().hex[:8]}", "credential_id": credential_id})
    return int(account["id"])


def _no_secret(*documents: Any) -> None:
    text = json.dumps(documents, default=str)
    assert OR_KEY not in text and OA_KEY not in text
    assert OR_KEY[-12:] not in text and OA_KEY[-12:] not in text


async def test_openrouter_management_key_gives_the_account_balance(
    api: Api, peers: tuple[FakeOpenRouter, FakeOpenAICosts],
) -> None:
    account_id = await _account(api, "openrouter", {"api_key": OR_KEY})
    _, result, headers = await api.call("POST", f"/external-accounts/{account_id}/sync-credits", scope="write",
                                        expect=200)
    assert Decimal(result["balance"]) == Decimal("74.75") and Decimal(result["used"]) == Decimal("25.75")
    assert result["currency"] == "USD"
    account = result["account"]
    assert Decimal(account["credits_remaining"]) == Decimal("74.75") and account["credits_unit"] == "USD"
    assert account["last_synced_at"] and account["sync_error"] is None
    synced = account["metadata"]["credit_sync"]
    assert synced["scope"] == "account" and synced["balance"] == "74.750000"
    _, fetched, _ = await api.call("GET", f"/external-accounts/{account_id}", expect=200)
    _no_secret(result, dict(headers), fetched)
    assert peers[0].paths == ["/api/v1/key", "/api/v1/credits"]


async def test_openrouter_ordinary_key_falls_back_to_the_key_limit(
    api: Api, peers: tuple[FakeOpenRouter, FakeOpenAICosts],
) -> None:
    peers[0].management = False
    account_id = await _account(api, "openrouter", {"api_key": OR_KEY})
    _, result, _ = await api.call("POST", f"/external-accounts/{account_id}/sync-credits", scope="write", expect=200)
    assert Decimal(result["balance"]) == Decimal("27.5") and Decimal(result["used"]) == Decimal("12.5")
    assert result["account"]["metadata"]["credit_sync"]["scope"] == "key"
    _no_secret(result)


async def test_openrouter_management_key_refused_by_key_endpoint_still_reads_credits(
    api: Api, peers: tuple[FakeOpenRouter, FakeOpenAICosts],
) -> None:
    peers[0].key_endpoint_open = False
    account_id = await _account(api, "openrouter", {"management_key": OR_KEY})
    _, result, _ = await api.call("POST", f"/external-accounts/{account_id}/sync-credits", scope="write", expect=200)
    assert Decimal(result["balance"]) == Decimal("74.75")
    assert result["account"]["metadata"]["credit_sync"]["scope"] == "account"
    peers[0].management = False  # refused by both endpoints: the key's fault, said without the key
    _, problem, _ = await api.call("POST", f"/external-accounts/{account_id}/sync-credits", scope="write",
                                   expect=502)
    assert "/key" in json.dumps(problem)
    _no_secret(result, problem)


async def test_openai_costs_are_summed_over_every_page(api: Api, peers: tuple[FakeOpenRouter, FakeOpenAICosts]) -> None:
    account_id = await _account(api, "openai", {"admin_key": OA_KEY})
    _, result, _ = await api.call("POST", f"/external-accounts/{account_id}/sync-credits", scope="write", expect=200)
    assert Decimal(result["used"]) == Decimal("4.00") and result["balance"] is None
    assert result["currency"] == "USD" and result["period_start"].endswith(("+00:00", "Z"))
    account = result["account"]
    assert account["credits_remaining"] is None and account["credits_unit"] == "USD"
    assert account["metadata"]["credit_sync"]["used"] == "4.000000"
    queries = peers[1].queries
    assert len(queries) == 3 and queries[0]["bucket_width"] == "1d" and "page" not in queries[0]
    assert queries[1]["page"] == "page_2"
    _no_secret(result)


async def test_a_refused_key_is_reported_without_echoing_it(api: Api) -> None:
    account_id = await _account(api, "openrouter", {"api_key": OR_KEY + "wrong"})
    code, problem, _ = await api.call("POST", f"/external-accounts/{account_id}/sync-credits", scope="write")
    assert code == 502 and problem["type"].endswith("upstream-failed")
    assert "401" in problem["detail"]
    _, account, _ = await api.call("GET", f"/external-accounts/{account_id}", expect=200)
    assert "401" in account["sync_error"] and account["last_synced_at"] is None
    _no_secret(problem, account)
    assert "wrong" not in json.dumps([problem, account])


async def test_unsupported_services_and_missing_credentials_are_409(api: Api) -> None:
    for service, secret, words in (("anthropic_console", {"api_key": "x" * 20}, "no balance"),
                                   ("openrouter", None, "no credential")):
        account_id = await _account(api, service, secret)
        code, problem, _ = await api.call("POST", f"/external-accounts/{account_id}/sync-credits", scope="write")
        assert code == 409, (service, problem)
        assert words in problem["detail"]
        _no_secret(problem)
    await api.call("POST", "/external-accounts/999999999/sync-credits", scope="write", expect=404)

    # The openrouter form refuses a secret without a key field up front (422, the value not echoed)...
    code, problem, _ = await api.call("POST", "/credentials", json={
        "name": f"cred-{uuid.uuid4().hex[:8]}", "service": "openrouter", "secret": {"token": OR_KEY}})
    assert code == 422 and problem["type"].endswith("validation-failed")
    _no_secret(problem)
    # ...and a credential of another service linked to the account is still refused at sync time.
    account_id = await _account(api, "openrouter", None)
    _, other, _ = await api.call("POST", "/credentials", expect=201, json={
        "name": f"cred-{uuid.uuid4().hex[:8]}", "service": "intranet", "secret": {"token": OR_KEY}})
    await api.call("PATCH", f"/external-accounts/{account_id}", scope="write", expect=200,
                   json={"credential_id": other["id"]})
    code, problem, _ = await api.call("POST", f"/external-accounts/{account_id}/sync-credits", scope="write")
    assert code == 409 and "api_key" in problem["detail"]
    _no_secret(problem)


async def test_credit_sync_auth_matrix(api: Api) -> None:
    account_id = await _account(api, "openrouter", {"api_key": OR_KEY})
    path = f"/external-accounts/{account_id}/sync-credits"
    async with api.client.post(path) as response:
        assert response.status == 401
    code, _, _ = await api.call("POST", path, scope="read")
    assert code == 403
    await api.call("POST", path, scope="write", expect=200)
    _, document, _ = await api.call("GET", "/openapi.json", expect=200)
    operation = document["paths"]["/external-accounts/{id}/sync-credits"]["post"]
    assert operation["x-required-scope"] == "write"
    assert document["paths"]["/knowledge-sources/{id}/sync"]["post"]["x-required-scope"] == "write"
