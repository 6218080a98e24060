"""The knowledge base (entries, full-text and semantic search) and the sources it is synced from.

Full-text search uses the database's own index: SQLite FTS5 (`knowledge_base_fts`, external
content over knowledge_base(title, content)) or a MariaDB FULLTEXT index on (title, content). Both
are created by the migrations; without them the search answers 503 and says so. Semantic search
ranks entries by cosine similarity to the query's embedding, computed by the provider that embedded
the entries (`embedding_model`), and is offered only when entries have embeddings and the daemon
passed an embedder.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.endpoint import Ctx, endpoint
from admin_api.problems import Conflict, NotFound, SourceRefused, Unavailable, UpstreamFailed, ValidationFailed
from admin_api.resource import ApiModel, Filter, Resource, crud_routes
from admin_api.resources._common import Id, JsonObject, Key, Name, Timestamps
from admin_api.state import READER, SERVICES, SESSIONS, SETTINGS
from bot.db.models import Credential, KnowledgeEntry, KnowledgeSource, SyncStatus

routes = web.RouteTableDef()
Tag = Annotated[str, Field(min_length=1, max_length=64)]
Tags = Annotated[list[Tag], Field(max_length=50)]
LanguageCode = Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z]{2,4})?$")]


class EntryCreate(ApiModel):
    """A document for the models to cite."""

    title: Key
    content: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    source_id: Id | None = None
    source_ref: Key | None = None
    tags: Tags = Field(default_factory=list)
    language: LanguageCode | None = None


class EntryUpdate(ApiModel):
    """Fields to change; new content drops the stale embedding."""

    title: Key | None = None
    content: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None
    tags: Tags | None = None
    language: LanguageCode | None = None


class EntryRead(Timestamps):
    """An entry (its embedding is summarised, not returned)."""

    title: str
    content: str
    source_id: int | None
    source_ref: str | None
    tags: list[str]
    language: str | None
    embedding_model: str | None
    content_sha256: str
    has_embedding: bool


def _entry_read(row: Any) -> BaseModel:
    return EntryRead(
        id=row.id, created_at=row.created_at, updated_at=row.updated_at, title=row.title,
        content=row.content, source_id=row.source_id, source_ref=row.source_ref, tags=row.tags or [],
        language=row.language, embedding_model=row.embedding_model, content_sha256=row.content_sha256,
        has_embedding=bool(row.embedding),
    )


async def _hash_content(ctx: Ctx, session: AsyncSession, values: dict[str, Any], row: Any) -> dict[str, Any]:
    if "content" in values:
        values["content_sha256"] = hashlib.sha256(values["content"].encode()).hexdigest()
        if row is not None and values["content_sha256"] != row.content_sha256:
            values["embedding"], values["embedding_model"] = None, None
    return values


ENTRIES = Resource(
    name="knowledge", tag="knowledge base", model=KnowledgeEntry, read=EntryRead, create=EntryCreate,
    update=EntryUpdate, prepare=_hash_content, to_read=_entry_read, singular="knowledge entry",
    sort_fields=("id", "created_at", "title"),
    filters={"source_id": Filter("source_id", int), "language": Filter("language", str),
             "title_contains": Filter("title", str, "contains")},
)


class SearchQuery(BaseModel):
    """What to look for and how."""

    model_config = ConfigDict(extra="forbid")
    q: Annotated[str, Field(min_length=1, max_length=500)]
    mode: Literal["fulltext", "semantic"] = "fulltext"
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    source_id: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None


class SearchHit(BaseModel):
    """One match; `score` is higher for better matches (bm25 or cosine, per mode)."""

    entry: EntryRead
    score: float


class SearchResults(BaseModel):
    """The best matches, best first."""

    mode: Literal["fulltext", "semantic"]
    items: list[SearchHit]


_WORD = re.compile(r"\w+", re.UNICODE)


async def _fulltext(session: AsyncSession, query: SearchQuery) -> list[tuple[int, float]]:
    words = _WORD.findall(query.q)[:20]
    if not words:
        raise ValidationFailed("the query has no words to search for", extra={"errors": [
            {"loc": ["query", "q"], "msg": "no searchable words", "type": "value_error"}]})
    dialect = session.get_bind().dialect.name
    source = " AND k.source_id = :source_id" if query.source_id is not None else ""
    params: dict[str, Any] = {"limit": query.limit, "source_id": query.source_id}
    if dialect == "sqlite":
        # Each word quoted: FTS5 syntax in the user's text is matched literally, never parsed.
        params["match"] = " ".join('"' + word.replace('"', '""') + '"' for word in words)
        statement = text(
            "SELECT k.id, -bm25(knowledge_base_fts) AS score FROM knowledge_base_fts "
            "JOIN knowledge_base k ON k.id = knowledge_base_fts.rowid "
            f"WHERE knowledge_base_fts MATCH :match{source} ORDER BY bm25(knowledge_base_fts) LIMIT :limit"
        )
    else:
        # Boolean mode with every word required, like FTS5's implicit AND; InnoDB does not index
        # words shorter than 3 characters, so requiring them would match nothing.
        params["match"] = " ".join("+" + word for word in words if len(word) >= 3) or words[0]
        statement = text(
            "SELECT k.id, MATCH(k.title, k.content) AGAINST (:match IN BOOLEAN MODE) AS score "
            "FROM knowledge_base k WHERE MATCH(k.title, k.content) AGAINST (:match IN BOOLEAN MODE)"
            f"{source} ORDER BY score DESC LIMIT :limit"
        )
    try:
        return [(int(row[0]), float(row[1])) for row in await session.execute(statement, params)]
    except DBAPIError as err:
        text_of = str(err.orig).lower()
        if "no such table" in text_of or "fulltext index" in text_of:
            raise Unavailable("the full-text index is missing; run `orchestrator migrate`") from None
        raise


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


async def _semantic(ctx: Ctx, session: AsyncSession, query: SearchQuery) -> list[tuple[int, float]]:
    embedder = ctx.request.app[SERVICES].embedder
    statement = select(KnowledgeEntry.id, KnowledgeEntry.embedding, KnowledgeEntry.embedding_model).where(
        KnowledgeEntry.embedding.is_not(None), KnowledgeEntry.embedding_model.is_not(None)).limit(50_000)
    if query.source_id is not None:
        statement = statement.where(KnowledgeEntry.source_id == query.source_id)
    rows = [row for row in (await session.execute(statement)).all() if row[1]]
    if embedder is None:
        raise Conflict("semantic search needs an embedding provider and this daemon has none; "
                       "use mode=fulltext")
    if not rows:
        raise Conflict("no knowledge entry has an embedding yet; use mode=fulltext")
    from bot.engine.providers.port import ProviderError

    serves = getattr(embedder, "serves", None)
    models = {row[2] for row in rows if serves is None or serves(row[2])}
    if not models:
        raise Conflict(f"the entries are embedded with {', '.join(sorted({row[2] for row in rows}))}, and this "
                       f"daemon embeds with {getattr(embedder, 'model', '?')}; sync the sources again or use "
                       "mode=fulltext")
    scored: list[tuple[int, float]] = []
    for model in models:
        try:
            vector = (await embedder.embed(model, [query.q]))[0]
        except ProviderError as err:
            raise UpstreamFailed(f"the embedding model {model!r} failed: {err.message}") from None
        scored += [(row[0], _cosine(vector, row[1])) for row in rows if row[2] == model and len(row[1]) == len(vector)]
    scored.sort(key=lambda pair: pair[1], reverse=True)
    return scored[: query.limit]


@endpoint(routes, "GET", "/knowledge/search", summary="Search the knowledge base", tag="knowledge base",
          scope="read", query=SearchQuery, response=SearchResults,
          problems=(ValidationFailed, Conflict, Unavailable, UpstreamFailed))
async def search(ctx: Ctx) -> SearchResults:
    """Full-text (database index) or semantic (embeddings) search."""
    query = ctx.query_as(SearchQuery)
    async with ctx.request.app[SESSIONS]() as session:
        ranked = await (_fulltext(session, query) if query.mode == "fulltext" else _semantic(ctx, session, query))
        ids = [entry_id for entry_id, _ in ranked]
        entries = {row.id: row for row in (await session.execute(
            select(KnowledgeEntry).where(KnowledgeEntry.id.in_(ids)))).scalars()} if ids else {}
    items = [SearchHit(entry=_entry_read(entries[i]), score=score) for i, score in ranked if i in entries]  # type: ignore[arg-type]
    return SearchResults(mode=query.mode, items=items)


crud_routes(ENTRIES, routes)


def _source_settings(value: dict[str, Any]) -> dict[str, Any]:
    interval = value.get("sync_interval_minutes")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int)
                                 or not 1 <= interval <= 7 * 24 * 60):
        raise ValueError("sync_interval_minutes must be a whole number of minutes from 1 to 10080")
    return value


SourceSettings = Annotated[JsonObject, AfterValidator(_source_settings)]


class SourceCreate(ApiModel):
    """Where documents come from; `settings.sync_interval_minutes` makes the daemon sync it on a timer.

    Kinds the daemon synchronises: `url` (an http(s) page or text/markdown file), `file` and
    `directory` (absolute paths under `[knowledge] allowed_roots`). A `url` source fetches with
    its `credential_id`'s secret (bearer token, basic auth or a custom header), sent only to the
    URL's own origin; only the credential's owner may link it or change the URI of a source using it.
    """

    name: Name
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    uri: Annotated[str, Field(min_length=1, max_length=1000)]
    credential_id: Id | None = None
    settings: SourceSettings = Field(default_factory=dict)
    is_active: bool = True


class SourceUpdate(ApiModel):
    """Fields to change."""

    name: Name | None = None
    uri: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    credential_id: Id | None = None
    settings: SourceSettings | None = None
    is_active: bool | None = None


class SourceRead(Timestamps):
    """A source and its last synchronisation."""

    name: str
    kind: str
    uri: str
    credential_id: int | None
    sync_status: SyncStatus
    sync_error: str | None
    last_synced_at: datetime | None
    settings: dict[str, object]
    is_active: bool


def _not_yours(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, extra={"errors": [
        {"loc": ["body", field], "msg": message, "type": "credential_owner"}]})


async def _credential_owner(ctx: Ctx, session: AsyncSession, values: dict[str, Any], row: Any) -> dict[str, Any]:
    """Only a credential's owner may decide where it is sent: link it, or change the URI of a source using it.

    The sync sends the credential to the source's URI, so anyone else who could point it at a
    host of their own would receive the secret.
    """
    credential_id = values["credential_id"] if "credential_id" in values else getattr(row, "credential_id", None)
    if credential_id is None or ("credential_id" not in values and "uri" not in values):
        return values
    owner = await session.scalar(select(Credential.user_id).where(Credential.id == credential_id))
    if owner == ctx.user_id:
        return values
    if "credential_id" in values:
        raise _not_yours("credential_id", f"credential {credential_id} belongs to another user; only its owner "
                                          "may link it to a knowledge source")
    raise _not_yours("uri", f"this source sends credential {credential_id}, which belongs to another user; only "
                            "its owner may change where it is sent (or unlink it first: credential_id=null)")


SOURCES = Resource(
    name="knowledge-sources", tag="knowledge sources", model=KnowledgeSource, read=SourceRead,
    create=SourceCreate, update=SourceUpdate, singular="knowledge source", prepare=_credential_owner,
    sort_fields=("id", "name", "created_at"),
    filters={"kind": Filter("kind", str), "sync_status": Filter("sync_status", SyncStatus),
             "is_active": Filter("is_active", bool)},
)
crud_routes(SOURCES, routes)


class SyncResult(BaseModel):
    """The source after a successful sync, and what changed in its entries."""

    source: SourceRead
    documents: int = Field(description="documents fetched")
    chunks: int = Field(description="distinct chunks stored for the source")
    added: int
    updated: int
    removed: int
    unchanged: int
    embedded: int = Field(description="chunks embedded in this sync")


@endpoint(routes, "POST", "/knowledge-sources/{id}/sync", summary="Fetch a knowledge source and update its entries",
          tag="knowledge sources", scope="write", response=SyncResult,
          problems=(NotFound, Conflict, SourceRefused, UpstreamFailed),
          description="Fetches the source and replaces its entries in one transaction (chunked, deduplicated "
                      "by content hash, full-text index kept current, embedded when the daemon has an embedder "
                      "and `[knowledge] embedding_model`). A `url` source with a credential sends it (bearer, "
                      "basic or a custom header) to the URL's origin only; an unusable credential answers 409. "
                      "On failure the previous entries stay and the source records `sync_status=failed` and "
                      "`sync_error`.")
async def sync_knowledge_source(ctx: Ctx) -> SyncResult:
    """Run one sync now (the caller waits; fetches are bounded by [knowledge] fetch_timeout_s)."""
    from bot.knowledge import (
        CredentialUnusable,
        EmbeddingFailed,
        FetchFailed,
        KnowledgeSyncError,
        SyncInProgress,
        sync_source,
    )
    from bot.knowledge import SourceRefused as Refused

    source_id = ctx.path_int()
    app = ctx.request.app
    async with app[SESSIONS]() as session:
        source = await session.get(KnowledgeSource, source_id)
        if source is None:
            raise NotFound(f"no knowledge source with id {source_id}")
        if not source.is_active:
            raise Conflict(f"knowledge source {source_id} is inactive; set is_active=true to sync it")
        kind = source.kind
    try:
        try:
            report = await sync_source(app[SESSIONS], source_id, settings=app[SETTINGS].knowledge,
                                       embedder=app[SERVICES].embedder, vault=app[SERVICES].vault)
        finally:  # entries and the source's status changed (or may have): list totals are stale
            app[READER].invalidate(ENTRIES.table, SOURCES.table)
    except (SyncInProgress, CredentialUnusable) as err:
        raise Conflict(err.message + (f"; {err.hint}" if err.hint else "")) from None
    except Refused as err:
        raise SourceRefused(err.message) from None
    except EmbeddingFailed as err:
        raise UpstreamFailed(err.message) from None
    except FetchFailed as err:
        if kind == "url":
            raise UpstreamFailed(err.message) from None
        raise Conflict(f"the source cannot be read: {err.message}") from None
    except KnowledgeSyncError as err:  # the source vanished between the check and the claim
        raise NotFound(err.message) from None
    row = await SOURCES.fetch_one(ctx, source_id)
    return SyncResult(source=SOURCES.read.model_validate(row, from_attributes=True), documents=report.documents,
                      chunks=report.chunks, added=report.added, updated=report.updated, removed=report.removed,
                      unchanged=report.unchanged, embedded=report.embedded)
