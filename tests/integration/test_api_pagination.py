"""One pagination scheme: keyset cursors stay consistent while rows are inserted; totals and Links."""

from __future__ import annotations

import re
import uuid

from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api

api, shared_db = harness.api, harness.shared_db


async def _insert_providers(api: Api, prefix: str, count: int) -> list[int]:
    ids = []
    for index in range(count):
        _, row, _ = await api.call("POST", "/providers", json={
            "name": f"{prefix}-{index:03d}", "kind": "openai_compatible", "base_url": "http://llm.test",
            "priority": index % 4}, expect=201)
        ids.append(row["id"])
    return ids


def _next_link(header: str) -> str | None:
    match = re.search(r'<([^>]+)>; rel="next"', header)
    return match.group(1) if match else None


async def test_pages_stay_consistent_under_inserts(api: Api) -> None:
    prefix = f"page-{uuid.uuid4().hex[:6]}"
    original = await _insert_providers(api, prefix, 23)
    for sort in ("id", "-id", "priority", "-priority", "name", "-created_at"):
        seen: list[int] = []
        url: str | None = f"/providers?limit=5&sort={sort}&name_contains={prefix}"
        inserted = 0
        totals = []
        while url is not None:
            _, page, headers = await api.call("GET", url, scope="read", expect=200)
            assert len(page["items"]) <= 5
            assert page["limit"] == 5
            assert headers["X-Total-Count"] == str(page["total"])
            totals.append(page["total"])
            seen += [item["id"] for item in page["items"]]
            url = _next_link(headers["Link"])
            assert (url is None) == (page["next_cursor"] is None)
            if inserted < 3:  # new rows arrive while the client pages
                inserted += len(await _insert_providers(api, f"{prefix}-{sort}-late{inserted}", 1))
        assert len(seen) == len(set(seen)), f"a row was returned twice with sort={sort}"
        assert set(original) <= set(seen), f"a row that existed before paging was skipped with sort={sort}"
        assert totals == sorted(totals)


async def test_cursor_is_bound_to_its_sort(api: Api) -> None:
    prefix = f"cur-{uuid.uuid4().hex[:6]}"
    await _insert_providers(api, prefix, 4)
    _, page, _ = await api.call("GET", f"/providers?limit=2&sort=name&name_contains={prefix}", expect=200)
    status, problem, _ = await api.call("GET", f"/providers?limit=2&sort=-id&cursor={page['next_cursor']}")
    assert status == 400
    assert problem["type"].endswith("invalid-cursor")
    _, empty, headers = await api.call("GET", "/providers?name_contains=nothing-matches-this", expect=200)
    assert empty == {"items": [], "total": 0, "limit": 50, "next_cursor": None}
    assert 'rel="next"' not in headers["Link"]
