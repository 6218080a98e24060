"""The openai and openrouter credential templates: shipped, added to existing databases on upgrade
without touching edited templates, and enforced on the secrets stored through the API."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import delete, select

from bot.db.engine import create_engine, session_factory
from bot.db.migrate import upgrade_to_head
from bot.db.models import AuthType, CredentialTemplate
from bot.db.seed import credential_templates
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api

shared_db = harness.shared_db
OPENROUTER_KEY = "sk-or-v1-" + "0f1e2d3c" * 8
OPENAI_KEY = "sk-proj-" + "Ab3_dE5-" * 6
OPENAI_ADMIN_KEY = "sk-admin-" + "q1w2e3r4" * 6


def test_the_templates_ask_for_the_keys_credit_sync_reads() -> None:
    templates = {t["service"]: t for t in credential_templates()}
    for service, keys in (("openai", ("api_key", "admin_key")), ("openrouter", ("api_key", "management_key"))):
        template = templates[service]
        assert template["auth_type"] == AuthType.API_KEY and template["oauth"] is None
        schema = template["fields_schema"]
        Draft202012Validator.check_schema(schema)
        assert set(schema["properties"]) == set(keys)
        assert all(schema["properties"][key]["format"] == "password" for key in keys)
    openai = Draft202012Validator(templates["openai"]["fields_schema"])
    assert openai.is_valid({"api_key": OPENAI_KEY}) and openai.is_valid({"admin_key": OPENAI_ADMIN_KEY})
    assert not openai.is_valid({"admin_key": OPENAI_KEY})  # costs need an admin key
    assert not openai.is_valid({}) and not openai.is_valid({"api_key": OPENAI_KEY, "org": "x"})
    openrouter = Draft202012Validator(templates["openrouter"]["fields_schema"])
    assert openrouter.is_valid({"api_key": OPENROUTER_KEY}) and openrouter.is_valid({"management_key": OPENROUTER_KEY})
    assert not openrouter.is_valid({"api_key": OPENAI_KEY}) and not openrouter.is_valid({"token": OPENROUTER_KEY})


async def test_an_upgrade_adds_the_new_templates_and_keeps_edited_ones(shared_db: str) -> None:
    engine = create_engine(shared_db)
    sessions = session_factory(engine)
    try:
        # A database seeded by a release without these templates, whose admin edited another one.
        async with sessions() as session:
            await session.execute(delete(CredentialTemplate).where(
                CredentialTemplate.service.in_(["openai", "openrouter"])))
            trello = (await session.execute(select(CredentialTemplate)
                                            .where(CredentialTemplate.service == "trello"))).scalar_one()
            trello.description = "our own words"
            await session.commit()

        report = await upgrade_to_head(shared_db, backup_dir=None)
        assert report.seeded["credential_templates"] == 2
        again = await upgrade_to_head(shared_db, backup_dir=None)
        assert again.seeded["credential_templates"] == 0

        async with sessions() as session:
            rows = {row.service: row for row in (await session.execute(select(CredentialTemplate))).scalars()}
            assert rows["trello"].description == "our own words"
            assert rows["openai"].fields_schema["anyOf"] == [{"required": ["api_key"]}, {"required": ["admin_key"]}]
            assert set(rows["openrouter"].fields_schema["properties"]) == {"api_key", "management_key"}
            rows["trello"].description = next(t for t in credential_templates()
                                              if t["service"] == "trello")["description"]
            await session.commit()
    finally:
        await engine.dispose()


@pytest.fixture
async def api(shared_db: str, tmp_path: Path) -> AsyncIterator[Api]:
    running = await harness.make_api(shared_db, tmp_path)
    try:
        yield running
    finally:
        await harness.close_api(running)


@pytest.mark.parametrize(("service", "secret", "field"), [
    ("openai", {"api_key": "not-a-key-but-long-enough"}, "api_key"),
    ("openai", {"admin_key": OPENAI_KEY}, "admin_key"),
    ("openrouter", {"api_key": OPENAI_KEY}, "api_key"),
    ("openrouter", {"token": OPENROUTER_KEY}, "additionalProperties"),
])
async def test_secrets_are_checked_against_the_form_without_echoing_them(
    api: Api, service: str, secret: dict[str, str], field: str,
) -> None:
    code, problem, _ = await api.call("POST", "/credentials", json={
        "name": f"{service}-{uuid.uuid4().hex[:8]}", "service": service, "secret": secret})
    assert code == 422 and problem["type"].endswith("validation-failed"), problem
    assert field in json.dumps(problem["errors"])
    for value in secret.values():
        assert value not in json.dumps(problem)


async def test_well_formed_keys_are_stored(api: Api) -> None:
    for service, secret in (("openai", {"api_key": OPENAI_KEY, "admin_key": OPENAI_ADMIN_KEY}),
                            ("openrouter", {"management_key": OPENROUTER_KEY})):
        _, row, _ = await api.call("POST", "/credentials", expect=201, json={
            "name": f"{service}-{uuid.uuid4().hex[:8]}", "service": service, "secret": secret})
        assert row["template_id"] is not None and row["has_secret"]
        assert OPENAI_KEY not in json.dumps(row) and OPENROUTER_KEY not in json.dumps(row)
