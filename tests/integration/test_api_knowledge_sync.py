"""Knowledge-source sync through the API (and the scheduler's entry point), on SQLite and MariaDB.

URL sources are fetched from a local aiohttp site; the SSRF guard is exercised for real (loopback
is allowed only through `[knowledge] allowed_private_networks`, metadata and other private
addresses are refused before any connection). Directory sources read a real temporary folder.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bot.app import Runtime
from bot.db.base import utcnow
from bot.db.engine import create_engine, session_factory
from bot.db.models import KnowledgeEntry, KnowledgeSource, SyncStatus
from bot.engine.providers.factory import build_provider
from bot.knowledge.embedder import LEXICAL, build_embedder
from bot.knowledge.scheduler import KnowledgeSyncComponent, run_due_syncs
from bot.settings import Settings
from bot.vault import Vault, load_keyring
from tests.fakes.ollama import FakeOllama
from tests.fakes.web_pages import WebPages
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api

shared_db = harness.shared_db
LIMIT = 4096
HTML = """<html><head><title>Vault guide</title><style>.x{color:red}</style></head>
<body><h1>Sealing</h1><p>The vault seals every secret with {word}.</p>
<script>var leaked = "scriptword";</script><p>Second paragraph about keys.</p></body></html>"""


@pytest.fixture
async def site() -> AsyncIterator[WebPages]:
    async with WebPages() as pages:
        yield pages


def _overrides(tmp: Path, **knowledge: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"allowed_private_networks": ["127.0.0.0/8"], "max_document_bytes": LIMIT,
                              "allowed_roots": [str(tmp)], "fetch_timeout_s": 5}
    values.update(knowledge)
    return {"knowledge": values}


@pytest.fixture
def kb_root(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    root.mkdir()
    return root


@pytest.fixture
async def api(shared_db: str, tmp_path: Path, kb_root: Path) -> AsyncIterator[Api]:
    running = await harness.make_api(shared_db, tmp_path, settings_overrides=_overrides(kb_root))
    try:
        yield running
    finally:
        await harness.close_api(running)


async def _source(api: Api, kind: str, uri: str, **extra: Any) -> int:
    _, row, _ = await api.call("POST", "/knowledge-sources", scope="write", expect=201, json={
        "name": f"src-{uuid.uuid4().hex[:10]}", "kind": kind, "uri": uri, **extra})
    return int(row["id"])


async def _entries(api: Api, source_id: int) -> list[dict[str, Any]]:
    _, page, _ = await api.call("GET", "/knowledge", params={"source_id": source_id, "limit": 200}, expect=200)
    return list(page["items"])


async def _search(api: Api, word: str, source_id: int) -> list[int]:
    _, found, _ = await api.call("GET", "/knowledge/search", params={"q": word, "source_id": source_id}, expect=200)
    return [hit["entry"]["id"] for hit in found["items"]]


async def test_url_sync_upserts_chunks_and_keeps_the_index_current(api: Api, site: WebPages) -> None:
    word = f"zq{uuid.uuid4().hex[:8]}"
    site.page("/guide.html", HTML.replace("{word}", word), content_type="text/html; charset=utf-8")
    source_id = await _source(api, "url", f"{site.url}/guide.html")

    _, result, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write", expect=200)
    assert result["documents"] == 1 and result["added"] == result["chunks"] >= 1
    assert result["source"]["sync_status"] == "ok" and result["source"]["last_synced_at"]
    [entry] = await _entries(api, source_id)
    assert entry["title"] == "Vault guide"
    assert word in entry["content"] and "scriptword" not in entry["content"] and "color:red" not in entry["content"]
    assert entry["source_ref"] == f"{site.url}/guide.html"
    assert await _search(api, word, source_id) == [entry["id"]]
    assert site.requests[-1][1] == f"127.0.0.1:{site.port}"  # the Host header names the host, not the pin

    # The same content again: nothing changes, the row (and its id) stays.
    _, again, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write", expect=200)
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, 1)
    assert [e["id"] for e in await _entries(api, source_id)] == [entry["id"]]

    # New content replaces the old one, in the rows and in the full-text index.
    fresh = f"zq{uuid.uuid4().hex[:8]}"
    site.page("/guide.html", f"# Renamed\n\nNow about {fresh}.", content_type="text/markdown")
    _, third, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write", expect=200)
    assert (third["added"], third["removed"]) == (1, 1)
    assert await _search(api, word, source_id) == []
    [renewed] = await _entries(api, source_id)
    assert renewed["title"] == "Renamed"
    assert await _search(api, fresh, source_id) == [renewed["id"]]


async def test_long_text_is_chunked_and_repeated_chunks_are_stored_once(api: Api, site: WebPages) -> None:
    paragraph = "Lorem ipsum dolor sit amet " * 30  # ~800 characters
    repeated = "This exact paragraph appears twice."
    text = "\n\n".join([f"{paragraph} {i}" for i in range(4)] + [repeated, "x " * 10, repeated])
    site.page("/long.txt", text[:LIMIT - 10])
    source_id = await _source(api, "url", f"{site.url}/long.txt")
    _, result, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write", expect=200)
    entries = await _entries(api, source_id)
    assert result["chunks"] == len(entries) > 1
    assert len({e["content_sha256"] for e in entries}) == len(entries)
    assert all(len(e["content"]) <= 2000 for e in entries)


@pytest.mark.parametrize(("path", "status", "content_type", "body", "expected"), [
    ("/missing", 404, "text/plain", "", "HTTP 404"),
    ("/big.txt", 200, "text/plain", "a" * (LIMIT + 1), "limit"),
    ("/image.png", 200, "image/png", "\x89PNG", "image/png"),
])
async def test_failed_fetch_keeps_previous_entries_and_records_the_error(
    api: Api, site: WebPages, path: str, status: int, content_type: str, body: str, expected: str,
) -> None:
    site.page(path, "# Good\n\nfirst version", content_type="text/markdown")
    source_id = await _source(api, "url", f"{site.url}{path}")
    await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write", expect=200)
    before = await _entries(api, source_id)

    if status == 404:
        del site.pages[path]
    else:
        site.page(path, body, content_type=content_type)
    code, problem, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write")
    assert code == 502, problem
    assert problem["type"].endswith("upstream-failed") and expected in problem["detail"]
    assert await _entries(api, source_id) == before
    _, source, _ = await api.call("GET", f"/knowledge-sources/{source_id}", expect=200)
    assert source["sync_status"] == "failed" and expected in source["sync_error"]


async def test_private_addresses_are_refused_unless_allowed(shared_db: str, tmp_path: Path, site: WebPages) -> None:
    site.page("/doc.txt", "hello")
    site.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/")
    site.redirect("/to-lan", "http://10.0.0.1/admin")
    strict = await harness.make_api(shared_db, tmp_path, settings_overrides={"knowledge": {}})
    try:
        source_id = await _source(strict, "url", f"{site.url}/doc.txt")
        code, problem, _ = await strict.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write")
        assert code == 422 and problem["type"].endswith("source-refused")
        assert "127.0.0.1" in problem["detail"]
        assert site.requests == []  # refused before connecting
    finally:
        await harness.close_api(strict)

    # Loopback allowed by network; a redirect to the LAN or to cloud metadata is still refused,
    # and metadata is refused even when every private host is allowed.
    for overrides in ({"allowed_private_networks": ["127.0.0.0/8"]}, {"allow_private_hosts": True}):
        running = await harness.make_api(shared_db, tmp_path, settings_overrides={"knowledge": overrides})
        try:
            paths = ("/to-metadata", "/to-lan") if "allowed_private_networks" in overrides else ("/to-metadata",)
            for path in paths:
                source_id = await _source(running, "url", f"{site.url}{path}")
                code, problem, _ = await running.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write")
                assert code == 422, (path, problem)
                assert "169.254.169.254" in problem["detail"] or "10.0.0.1" in problem["detail"]
        finally:
            await harness.close_api(running)


async def test_bad_urls_and_unknown_kinds_are_refused(api: Api, site: WebPages) -> None:
    for kind, uri in (("url", "ftp://example.org/x"), ("url", "not a url"), ("notion", "workspace"),
                      ("url", f"http://user:pw@127.0.0.1:{site.port}/x")):
        source_id = await _source(api, kind, uri)
        code, problem, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write")
        assert code == 422, (kind, uri, problem)
        assert "pw" not in problem["detail"]


async def test_directory_sync_reads_allowed_files_and_refuses_escapes(
    api: Api, kb_root: Path, tmp_path: Path,
) -> None:
    docs = kb_root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Alpha\n\nalpha words")
    (docs / "b.txt").write_text("bravo words")
    (docs / "sub" / "c.html").write_text("<title>Charlie</title><p>charlie words</p>")
    (docs / "skip.bin").write_bytes(b"\x00\x01")
    source_id = await _source(api, "directory", str(docs))
    _, result, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write", expect=200)
    assert result["documents"] == 3
    entries = {e["source_ref"]: e for e in await _entries(api, source_id)}
    assert set(entries) == {"docs/a.md", "docs/b.txt", "docs/sub/c.html"}
    assert entries["docs/sub/c.html"]["title"] == "Charlie"

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("do not read")
    for uri in (f"{kb_root}/../outside", str(outside), "relative/path", f"{kb_root}/nothing-here"):
        bad = await _source(api, "directory", uri)
        code, problem, _ = await api.call("POST", f"/knowledge-sources/{bad}/sync", scope="write")
        assert code == 422, (uri, problem)

    # A symlink leading out of the root refuses the whole sync; the previous entries stay.
    before = await _entries(api, source_id)
    os.symlink(outside / "secret.md", docs / "link.md")
    code, problem, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write")
    assert code == 422 and "outside" in problem["detail"]
    assert await _entries(api, source_id) == before
    file_source = await _source(api, "file", str(docs / "link.md"))
    code, _, _ = await api.call("POST", f"/knowledge-sources/{file_source}/sync", scope="write")
    assert code == 422


async def test_a_failure_mid_sync_keeps_the_old_documents(api: Api, kb_root: Path) -> None:
    docs = kb_root / "mid"
    docs.mkdir()
    (docs / "one.md").write_text("# One\n\nfirst document")
    source_id = await _source(api, "directory", str(docs))
    await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write", expect=200)
    before = await _entries(api, source_id)
    # The next sync changes one.md and meets an oversized file after it: nothing of it is written.
    (docs / "one.md").write_text("# One\n\nchanged document")
    (docs / "two.md").write_text("b" * (LIMIT + 1))
    code, problem, _ = await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write")
    assert code == 409 and "limit" in problem["detail"]
    assert await _entries(api, source_id) == before
    _, source, _ = await api.call("GET", f"/knowledge-sources/{source_id}", expect=200)
    assert source["sync_status"] == "failed"


async def test_embeddings_are_computed_and_an_embedder_failure_writes_nothing(
    shared_db: str, tmp_path: Path, kb_root: Path,
) -> None:
    docs = kb_root / "emb"
    docs.mkdir()
    (docs / "one.md").write_text("# One\n\nvectors please")
    async with FakeOllama() as ollama:
        ollama.script("nomic-embed-text", model_type="embedding")
        embedder = build_provider(kind="ollama", name="embed", base_url=ollama.url)
        try:
            for model, expect in (("nomic-embed-text", 200), ("missing-model", 502)):
                overrides = _overrides(kb_root, embedding_model=model)
                running = await harness.make_api(shared_db, tmp_path, services={"embedder": embedder},
                                                 settings_overrides=overrides)
                try:
                    source_id = await _source(running, "directory", str(docs))
                    code, body, _ = await running.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write")
                    assert code == expect, body
                    entries = await _entries(running, source_id)
                    if expect == 200:
                        assert body["embedded"] == 1
                        assert entries[0]["has_embedding"] and entries[0]["embedding_model"] == model
                    else:
                        assert entries == [] and "missing-model" in body["detail"]
                finally:
                    await harness.close_api(running)
        finally:
            await embedder.aclose()


async def test_sync_auth_matrix_and_states(api: Api, site: WebPages) -> None:
    site.page("/a.txt", "auth matrix")
    source_id = await _source(api, "url", f"{site.url}/a.txt")
    path = f"/knowledge-sources/{source_id}/sync"
    async with api.client.post(path) as response:
        assert response.status == 401
    code, problem, _ = await api.call("POST", path, scope="read")
    assert code == 403 and problem["type"].endswith("insufficient-scope")
    await api.call("POST", path, scope="write", expect=200)
    await api.call("POST", path, scope="admin", expect=200)
    await api.call("POST", "/knowledge-sources/999999999/sync", scope="write", expect=404)
    # A sync in progress elsewhere (the CLI, the scheduler) is not run twice.
    async with api.sessions() as session:
        await session.execute(update(KnowledgeSource).where(KnowledgeSource.id == source_id)
                              .values(sync_status=SyncStatus.SYNCING, updated_at=utcnow()))
        await session.commit()
    code, problem, _ = await api.call("POST", path, scope="write")
    assert code == 409 and "already" in problem["detail"]
    await api.call("PATCH", f"/knowledge-sources/{source_id}", scope="write", json={"is_active": False}, expect=200)
    code, _, _ = await api.call("POST", path, scope="write")
    assert code == 409
    code, problem, _ = await api.call("POST", "/knowledge-sources", scope="write", json={
        "name": "bad-interval", "kind": "url", "uri": "http://x", "settings": {"sync_interval_minutes": 0}})
    assert code == 422


async def test_scheduler_syncs_due_sources_only(api: Api, site: WebPages, kb_root: Path) -> None:
    site.page("/due.txt", "scheduled words")
    due = await _source(api, "url", f"{site.url}/due.txt", settings={"sync_interval_minutes": 5})
    manual = await _source(api, "url", f"{site.url}/due.txt")
    settings = Settings(data_dir=kb_root, **_overrides(kb_root))
    synced = await run_due_syncs(api.sessions, settings)
    assert due in synced and manual not in synced
    assert due not in await run_due_syncs(api.sessions, settings)  # not due again for 5 minutes
    async with api.sessions() as session:
        count = len((await session.execute(select(KnowledgeEntry.id).where(KnowledgeEntry.source_id == due))).all())
    assert count == 1


async def test_the_daemons_scheduled_sync_embeds_and_authenticates_like_the_api(
    shared_db: str, tmp_path: Path, kb_root: Path, site: WebPages,
) -> None:
    token = "sched-" + uuid.uuid4().hex
    site.page("/garden.txt", "Water the tomatoes every morning and keep the soil moist.",
              require={"Authorization": f"Bearer {token}"})
    overrides = _overrides(kb_root, embedding_model=LEXICAL, schedule_check_s=3600)
    engine = create_engine(shared_db)
    runtime = Runtime(settings=Settings(data_dir=tmp_path, **overrides), engine=engine,
                      session_factory=session_factory(engine),
                      vault=Vault(keyring=load_keyring(path=tmp_path / "keyring.json", create=True)))
    component = KnowledgeSyncComponent(runtime)
    await component.start()
    try:
        assert runtime.knowledge_embedder is component.embedder
        assert component.embedder is not None and component.embedder.model == LEXICAL
        api = await harness.make_api(shared_db, tmp_path, settings_overrides=overrides,
                                     services={"embedder": runtime.knowledge_embedder})
        try:
            _, credential, _ = await api.call("POST", "/credentials", expect=201, json={
                "name": f"sched-{uuid.uuid4().hex[:8]}", "service": "intranet", "secret": {"token": token}})
            source_id = await _source(api, "url", f"{site.url}/garden.txt", credential_id=credential["id"],
                                      settings={"sync_interval_minutes": 5})
            assert source_id in await component.run_once()
            [entry] = await _entries(api, source_id)
            assert entry["has_embedding"] and entry["embedding_model"] == LEXICAL
            _, found, _ = await api.call("GET", "/knowledge/search", expect=200, params={
                "q": "how often do tomatoes need water", "mode": "semantic", "source_id": source_id})
            assert [hit["entry"]["id"] for hit in found["items"]] == [entry["id"]]
        finally:
            await harness.close_api(api)
    finally:
        await component.stop()
        await engine.dispose()


async def test_semantic_search_says_when_entries_were_embedded_by_another_model(
    api: Api, shared_db: str, kb_root: Path, tmp_path: Path,
) -> None:
    docs = kb_root / "other-model"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha")
    source_id = await _source(api, "directory", str(docs))
    await api.call("POST", f"/knowledge-sources/{source_id}/sync", scope="write", expect=200)
    async with api.sessions() as session:
        await session.execute(update(KnowledgeEntry).where(KnowledgeEntry.source_id == source_id)
                              .values(embedding=[1.0, 0.0], embedding_model="retired-model"))
        await session.commit()
    choice = await build_embedder(Settings(data_dir=tmp_path, knowledge={"embedding_model": LEXICAL}), api.sessions)
    running = await harness.make_api(shared_db, tmp_path, services={"embedder": choice.embedder})
    try:
        code, problem, _ = await running.call("GET", "/knowledge/search", params={
            "q": "alpha", "mode": "semantic", "source_id": source_id})
        assert code == 409 and "retired-model" in problem["detail"] and LEXICAL in problem["detail"]
    finally:
        await harness.close_api(running)
