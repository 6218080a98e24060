"""Knowledge search: the database's full-text index (FTS5 / FULLTEXT) and semantic ranking."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import text

from bot.db.models import KnowledgeEntry
from bot.engine.providers.factory import build_provider
from tests.fakes.ollama import FakeOllama
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api

api, shared_db = harness.api, harness.shared_db

# The index the migrations are expected to create (kept here so the search is tested against the
# real engines even before they do); IF NOT EXISTS makes it a no-op once the schema has it.
SQLITE_FTS = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS knowledge_base_fts USING fts5("
    "title, content, content='knowledge_base', content_rowid='id')",
    "CREATE TRIGGER IF NOT EXISTS knowledge_base_fts_ai AFTER INSERT ON knowledge_base BEGIN "
    "INSERT INTO knowledge_base_fts(rowid, title, content) VALUES (new.id, new.title, new.content); END",
    "CREATE TRIGGER IF NOT EXISTS knowledge_base_fts_ad AFTER DELETE ON knowledge_base BEGIN "
    "INSERT INTO knowledge_base_fts(knowledge_base_fts, rowid, title, content) "
    "VALUES ('delete', old.id, old.title, old.content); END",
    "CREATE TRIGGER IF NOT EXISTS knowledge_base_fts_au AFTER UPDATE ON knowledge_base BEGIN "
    "INSERT INTO knowledge_base_fts(knowledge_base_fts, rowid, title, content) "
    "VALUES ('delete', old.id, old.title, old.content); "
    "INSERT INTO knowledge_base_fts(rowid, title, content) VALUES (new.id, new.title, new.content); END",
]
MARIADB_FULLTEXT = "CREATE FULLTEXT INDEX IF NOT EXISTS ix_knowledge_base_fulltext ON knowledge_base (title, content)"


async def _ensure_index(api: Api) -> None:
    async with api.engine.begin() as connection:
        if api.engine.dialect.name == "sqlite":
            for statement in SQLITE_FTS:
                await connection.execute(text(statement))
        else:
            await connection.execute(text(MARIADB_FULLTEXT))


async def test_fulltext_search_ranks_matches_and_treats_syntax_literally(api: Api) -> None:
    await _ensure_index(api)
    marker = f"zq{uuid.uuid4().hex[:8]}"
    docs = {
        "vault": f"The vault seals every secret with AES-256-GCM {marker}",
        "queue": f"The durable queue claims jobs with SKIP LOCKED {marker}",
        "both": f"Secrets in the queue payload are sealed by the vault first {marker}",
    }
    ids = {}
    for title, content in docs.items():
        _, row, _ = await api.call("POST", "/knowledge", json={"title": title, "content": content}, expect=201)
        ids[title] = row["id"]
    _, found, _ = await api.call("GET", f"/knowledge/search?q=vault+{marker}", scope="read", expect=200)
    hits = [hit["entry"]["id"] for hit in found["items"]]
    assert set(hits) == {ids["vault"], ids["both"]}
    assert all(hit["score"] > 0 for hit in found["items"])
    # Edits are searchable at once; the old words are gone.
    await api.call("PATCH", f"/knowledge/{ids['queue']}", json={"content": f"now about gardening {marker}"},
                   expect=200)
    _, found, _ = await api.call("GET", f"/knowledge/search?q=LOCKED+{marker}", expect=200)
    assert found["items"] == []
    # Query syntax from the user is matched as words, never parsed (no 500 on quotes or operators).
    for hostile in ['"unbalanced', "NEAR(a b", "title:x OR *", "a AND (b", "-- ;DROP"]:
        status, _, _ = await api.call("GET", "/knowledge/search", params={"q": hostile})
        assert status in (200, 422)
    status, problem, _ = await api.call("GET", "/knowledge/search", params={"q": "!!! ???"})
    assert status == 422
    assert problem["type"].endswith("validation-failed")


async def test_semantic_search_uses_the_embedding_model(shared_db: str, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    async with FakeOllama() as ollama:
        ollama.script("nomic-embed-text", model_type="embedding")
        embedder = build_provider(kind="ollama", name="embed", base_url=ollama.url)
        running = await harness.make_api(shared_db, tmp_path_factory.getbasetemp(), services={"embedder": embedder})
        try:
            texts = [f"semantic document {uuid.uuid4().hex[:6]} about {topic}" for topic in ("cats", "taxes", "cats")]
            vectors = await embedder.embed("nomic-embed-text", texts)
            async with running.sessions() as session:
                rows = [KnowledgeEntry(title=f"doc{i}", content=content, embedding=vector,
                                       embedding_model="nomic-embed-text",
                                       content_sha256=hashlib.sha256(content.encode()).hexdigest())
                        for i, (content, vector) in enumerate(zip(texts, vectors, strict=True))]
                session.add_all(rows)
                await session.commit()
            _, found, _ = await running.call("GET", "/knowledge/search", params={
                "q": texts[1], "mode": "semantic", "limit": 3}, expect=200)
            assert found["mode"] == "semantic"
            assert found["items"][0]["entry"]["id"] == rows[1].id
            assert found["items"][0]["score"] >= found["items"][-1]["score"]
            assert any(call.path == "/api/embed" for call in ollama.calls())
        finally:
            await harness.close_api(running)
            await embedder.aclose()


async def test_semantic_search_without_an_embedder_says_so(api: Api) -> None:
    status, problem, _ = await api.call("GET", "/knowledge/search", params={"q": "x", "mode": "semantic"})
    assert status == 409
    assert "embedding" in problem["detail"]
