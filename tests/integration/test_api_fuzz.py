"""Property-based fuzz of the whole API from its own OpenAPI document: no input yields a 5xx.

The API runs through `start_admin_api` in a thread of its own (a real TCP listener on port 0),
so hypothesis drives it synchronously with httpx. Requests are generated from the document's
parameter and body schemas (hypothesis-jsonschema), with path ids biased to rows that exist.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BUDGET_S = 60.0
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                  st.floats(allow_nan=False, allow_infinity=False))


def from_schema(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for the JSON Schema subset pydantic emits: mostly valid, sometimes off by one rule.

    (hypothesis-jsonschema does not run on this hypothesis release, so this small generator
    covers $ref, anyOf, enum/const, objects, arrays, strings with patterns and bounded numbers.)
    """
    if depth > 6:
        return _JUNK
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(components["schemas"][name], components, depth + 1))
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([from_schema(s, components, depth + 1) for s in schema.get("anyOf", schema.get("oneOf"))])
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return from_schema(schema["allOf"][0], components, depth + 1)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), st.text(max_size=8))
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, components, depth + 1) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = schema.get("minimum", -(2**63)), schema.get("maximum", 2**63 - 1)
        return st.one_of(st.integers(low, high), st.integers(-(2**70), 2**70))
    if kind == "number":
        return st.one_of(st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False,
                                   allow_infinity=False), st.floats(allow_nan=False, allow_infinity=False))
    if kind == "string":
        if "pattern" in schema:
            return st.one_of(st.from_regex(schema["pattern"], fullmatch=True).map(lambda v: v[:300]),
                             st.text(max_size=10))
        if schema.get("format") == "date-time":
            return st.one_of(st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(lambda d: d.isoformat()),
                             st.text(max_size=10))
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind == "array":
        items = from_schema(schema.get("items", {}), components, depth + 1)
        return st.lists(items, max_size=min(schema.get("maxItems", 4), 4))
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {name: from_schema(sub, components, depth + 1) for name, sub in properties.items() if name in required}
        optional = {name: from_schema(sub, components, depth + 1) for name, sub in properties.items()
                    if name not in required}
        valid = st.fixed_dictionaries(fixed, optional=optional)
        if not properties:
            return st.dictionaries(st.text(max_size=8), _JUNK, max_size=3)
        junk = st.dictionaries(st.text(max_size=5), _JUNK, max_size=2)
        return st.one_of(valid, valid.map(lambda d: {**d, "unexpected": 1}), junk)
    return _JUNK


class _Server:
    def __init__(self, url: str, data_dir: Path) -> None:
        self.url, self.data_dir = url, data_dir
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.base_url = ""
        self.token = ""
        self.handle: Any = None
        self.engine: Any = None

    async def _start(self) -> None:
        from sqlalchemy import select, text

        from admin_api import ApiOptions, Services, start_admin_api
        from admin_api.auth import mint_token
        from bot.db.engine import create_engine, session_factory
        from bot.db.migrate import upgrade_to_head
        from bot.db.models import User, UserRole
        from bot.events import EventBus
        from bot.settings import Settings
        from bot.vault import Vault, load_keyring
        from tests.integration.test_api_knowledge import SQLITE_FTS

        await upgrade_to_head(self.url, backup_dir=None)
        self.engine = create_engine(self.url)
        async with self.engine.begin() as connection:  # the full-text index search expects
            for statement in SQLITE_FTS:
                await connection.execute(text(statement))
        sessions = session_factory(self.engine)
        async with sessions() as session:
            admin = (await session.execute(select(User).where(User.role == UserRole.ADMIN).limit(1))).scalar_one()
            self.token = (await mint_token(session, user_id=admin.id, name="fuzz", scopes=["admin"])).secret
            await session.commit()
        settings = Settings(data_dir=self.data_dir, admin_api={"host": "127.0.0.1", "port": 0})
        vault = Vault(keyring=load_keyring(path=self.data_dir / "keyring.json", create=True))
        self.handle = await start_admin_api(
            settings=settings, session_factory=sessions, bus=EventBus(), services=Services(vault=vault),
            options=ApiOptions(rate_per_second=100_000, burst=100_000),
        )
        self.base_url = self.handle.base_url

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=120)

    def stop(self) -> None:
        async def _stop() -> None:
            await self.handle.stop()
            await self.engine.dispose()

        if self.handle is not None:
            asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    running = _Server(f"sqlite+aiosqlite:///{data_dir / 'orchestrator.db'}", data_dir)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_no_input_makes_the_api_fail_with_5xx(server: _Server) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        document = client.get("/openapi.json").json()
        components = document["components"]
        operations = [
            (path, method, op) for path, item in document["paths"].items() for method, op in item.items()
            if not path.startswith("/ws/")
        ]
        assert len(operations) > 50
        started = time.monotonic()
        failures: list[str] = []
        counts: dict[str, int] = {}

        def schema_strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
            return from_schema(schema, components)

        @st.composite
        def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], Any, str]:
            path, method, op = draw(st.sampled_from(operations))
            url_path = path
            query: dict[str, str] = {}
            for parameter in op.get("parameters", []):
                if parameter["in"] == "path":
                    if parameter["name"] == "service":
                        value = draw(st.sampled_from(["github", "gmail", "nope", "a%20b"]))
                    else:
                        value = draw(st.one_of(st.integers(1, 30), st.integers(0, 2**63 - 1)))
                    url_path = url_path.replace("{" + parameter["name"] + "}", str(value))
                elif parameter["in"] == "query" and (parameter.get("required") or draw(st.booleans())):
                    generated = draw(schema_strategy(parameter["schema"]))
                    if generated is not None:
                        query[parameter["name"]] = _query_value(generated)
            body = None
            if "requestBody" in op:
                body = draw(schema_strategy(op["requestBody"]["content"]["application/json"]["schema"]))
            return method.upper(), url_path, query, body, path

        @settings(max_examples=700, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(requests())
        def check(request: tuple[str, str, dict[str, str], Any, str]) -> None:
            if time.monotonic() - started > BUDGET_S:
                return
            method, url_path, query, body, template = request
            counts[template] = counts.get(template, 0) + 1
            response = client.request(method, url_path, params=query,
                                      json=body if body is not None else None)
            if response.status_code >= 500:
                failures.append(f"{method} {url_path} {query} {str(body)[:300]} -> {response.status_code} "
                                f"{response.text[:300]}")
            content_type = response.headers.get("content-type", "")
            if response.status_code >= 400:
                assert content_type.startswith("application/problem+json"), (method, url_path, content_type)

        check()
        assert not failures, "\n".join(failures[:10])
        assert len(counts) > len(operations) // 2, f"only {len(counts)} operations were exercised"
