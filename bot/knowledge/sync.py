"""Synchronising one knowledge source: fetch, chunk, embed, then replace its entries atomically.

Everything that can fail slowly or remotely (fetching, embedding) happens before the write
transaction opens; the write itself (insert new chunks, keep unchanged ones, delete vanished ones,
mark the source `ok`) is one transaction, so a failure at any point leaves the previous entries
exactly as they were and the source marked `failed` with the reason. Chunks are identified by
the SHA-256 of their content (unique per source), so an unchanged chunk keeps its row, its id and
its embedding, and the full-text index (triggers on SQLite, FULLTEXT on MariaDB) follows the rows.

A sync claims its source by switching it to `syncing` with a conditional UPDATE, so the CLI, the
API and the scheduler never run two syncs of one source at once; a claim older than
`STALE_CLAIM` (a crashed process) is taken over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.base import utcnow
from bot.db.models import KnowledgeEntry, KnowledgeSource, SyncStatus
from bot.knowledge.auth import source_auth
from bot.knowledge.chunking import chunk_text
from bot.knowledge.errors import EmbeddingFailed, KnowledgeSyncError, SyncInProgress
from bot.knowledge.fetch import Document, fetch_documents
from bot.logs import get_logger
from bot.settings import KnowledgeSettings

_log = get_logger(__name__)
STALE_CLAIM = timedelta(minutes=30)
EMBED_BATCH = 32
INTERVAL_KEY = "sync_interval_minutes"
_KEY_CHARS = 255


@dataclass(frozen=True)
class Chunk:
    """A piece of a document as it will be stored."""

    ref: str
    title: str
    content: str
    sha256: str


@dataclass(frozen=True)
class SyncReport:
    """What one sync changed."""

    source_id: int
    documents: int
    chunks: int
    added: int
    updated: int
    removed: int
    unchanged: int
    embedded: int
    synced_at: datetime


def _bounded(text: str, limit: int = _KEY_CHARS) -> str:
    """A value for a 255-character column; long ones keep their start and a digest (still unique)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[: limit - 18]}…#{digest}"


def make_chunks(documents: Sequence[Document], max_chars: int) -> list[Chunk]:
    """Every document's chunks, the same content (within this source) kept once."""
    seen: set[str] = set()
    chunks: list[Chunk] = []
    for document in documents:
        pieces = chunk_text(document.text, max_chars)
        for index, piece in enumerate(pieces):
            digest = hashlib.sha256(piece.encode()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            title = document.title if len(pieces) == 1 else f"{document.title} ({index + 1}/{len(pieces)})"
            ref = document.ref if len(pieces) == 1 else f"{document.ref}#{index + 1}"
            chunks.append(Chunk(ref=_bounded(ref), title=_bounded(title or ref), content=piece, sha256=digest))
    return chunks


async def _claim(sessions: async_sessionmaker[AsyncSession], source_id: int) -> KnowledgeSource:
    async with sessions() as session:
        source = await session.get(KnowledgeSource, source_id)
        if source is None:
            raise KnowledgeSyncError(f"no knowledge source with id {source_id}",
                                     hint="list them with GET /knowledge-sources")
        now = utcnow()
        claimed = await session.execute(
            update(KnowledgeSource)
            .where(KnowledgeSource.id == source_id,
                   or_(KnowledgeSource.sync_status != SyncStatus.SYNCING,
                       KnowledgeSource.updated_at < now - STALE_CLAIM))
            .values(sync_status=SyncStatus.SYNCING, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise SyncInProgress(f"knowledge source {source_id} is being synchronised already",
                                 hint="wait for it to finish, then try again")
        await session.commit()
        session.expunge(source)
        return source


async def _embed(embedder: Any, model: str, texts: list[str]) -> list[list[float]]:
    from bot.engine.providers.port import ProviderError

    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBED_BATCH):
        batch = texts[start:start + EMBED_BATCH]
        try:
            answer = await embedder.embed(model, batch)
        except ProviderError as err:
            raise EmbeddingFailed(f"embedding with {model!r} failed: {err.message}") from None
        if len(answer) != len(batch):
            raise EmbeddingFailed(
                f"the embedding model {model!r} returned {len(answer)} vectors for {len(batch)} texts")
        vectors += [list(vector) for vector in answer]
    return vectors


async def _existing(sessions: async_sessionmaker[AsyncSession], source_id: int) -> dict[str, tuple[int, str | None]]:
    async with sessions() as session:
        rows = await session.execute(
            select(KnowledgeEntry.content_sha256, KnowledgeEntry.id, KnowledgeEntry.embedding_model)
            .where(KnowledgeEntry.source_id == source_id))
        return {row[0]: (int(row[1]), row[2]) for row in rows}


async def _write(
    sessions: async_sessionmaker[AsyncSession], source: KnowledgeSource, chunks: list[Chunk],
    existing: dict[str, tuple[int, str | None]], vectors: dict[str, list[float]], model: str | None,
) -> SyncReport:
    """The one transaction that replaces the source's entries and marks it synced."""
    wanted = {chunk.sha256 for chunk in chunks}
    vanished = [row_id for digest, (row_id, _) in existing.items() if digest not in wanted]
    added = updated = unchanged = 0
    now = utcnow()
    async with sessions() as session, session.begin():
        if vanished:
            await session.execute(delete(KnowledgeEntry).where(KnowledgeEntry.id.in_(vanished))
                                  .execution_options(synchronize_session=False))
        kept = {row.content_sha256: row for row in (await session.execute(
            select(KnowledgeEntry).where(KnowledgeEntry.source_id == source.id))).scalars()}
        for chunk in chunks:
            row = kept.get(chunk.sha256)
            if row is None:
                session.add(KnowledgeEntry(
                    title=chunk.title, content=chunk.content, source_id=source.id, source_ref=chunk.ref,
                    content_sha256=chunk.sha256, tags=[], embedding=vectors.get(chunk.sha256),
                    embedding_model=model if chunk.sha256 in vectors else None))
                added += 1
                continue
            changed = False
            if (row.title, row.source_ref) != (chunk.title, chunk.ref):
                row.title, row.source_ref, changed = chunk.title, chunk.ref, True
            if chunk.sha256 in vectors:
                row.embedding, row.embedding_model, changed = vectors[chunk.sha256], model, True
            updated += changed
            unchanged += not changed
        await session.execute(
            update(KnowledgeSource).where(KnowledgeSource.id == source.id)
            .values(sync_status=SyncStatus.OK, sync_error=None, last_synced_at=now, updated_at=now)
            .execution_options(synchronize_session=False))
    return SyncReport(source_id=source.id, documents=0, chunks=len(chunks), added=added, updated=updated,
                      removed=len(vanished), unchanged=unchanged, embedded=len(vectors), synced_at=now)


async def _record_failure(sessions: async_sessionmaker[AsyncSession], source_id: int, message: str) -> None:
    async with sessions() as session:
        await session.execute(
            update(KnowledgeSource).where(KnowledgeSource.id == source_id)
            .values(sync_status=SyncStatus.FAILED, sync_error=message[:2000], updated_at=utcnow())
            .execution_options(synchronize_session=False))
        await session.commit()


async def sync_source(
    sessions: async_sessionmaker[AsyncSession], source_id: int, *, settings: KnowledgeSettings,
    embedder: Any = None, vault: Any = None,
) -> SyncReport:
    """Fetch the source and make its entries match it; KnowledgeSyncError (recorded on the source) if not.

    `embedder` (an LLMProvider with `embed(model, texts)`) and `settings.embedding_model` together
    enable embeddings for new chunks and for kept chunks embedded by another model or not at all.
    `vault` opens the source's linked credential (url sources); without one such a source fails.
    """
    source = await _claim(sessions, source_id)
    try:
        auth = await source_auth(sessions, source, vault)
        documents = await fetch_documents(source.kind, source.uri, settings, auth=auth)
        chunks = make_chunks(documents, settings.chunk_chars)
        existing = await _existing(sessions, source_id)
        model = settings.embedding_model if embedder is not None else None
        vectors: dict[str, list[float]] = {}
        if model is not None:
            pending = [chunk for chunk in chunks
                       if chunk.sha256 not in existing or existing[chunk.sha256][1] != model]
            embedded = await _embed(embedder, model, [chunk.content for chunk in pending])
            vectors = {chunk.sha256: vector for chunk, vector in zip(pending, embedded, strict=True)}
        report = await _write(sessions, source, chunks, existing, vectors, model)
    except KnowledgeSyncError as err:
        await _record_failure(sessions, source_id, err.message)
        _log.warning("knowledge.sync_failed", source_id=source_id, error=err.message)
        raise
    except Exception as err:  # a bug or a database failure: the source must not stay `syncing`
        await _record_failure(sessions, source_id, f"internal error ({type(err).__name__}); see the daemon log")
        raise
    report = SyncReport(**{**report.__dict__, "documents": len(documents)})
    _log.info("knowledge.synced", source_id=source_id, documents=report.documents, chunks=report.chunks,
              added=report.added, removed=report.removed, embedded=report.embedded)
    return report


def interval_of(source: KnowledgeSource) -> timedelta | None:
    """The source's sync interval from its settings (`sync_interval_minutes`), if it has one."""
    value = (source.settings or {}).get(INTERVAL_KEY)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return timedelta(minutes=value)
    return None


async def due_sources(sessions: async_sessionmaker[AsyncSession], *, now: datetime | None = None) -> list[int]:
    """Active sources with an interval whose last sync (or failed attempt) is at least that old."""
    now = now or utcnow()
    async with sessions() as session:
        sources = (await session.execute(select(KnowledgeSource).where(KnowledgeSource.is_active.is_(True))
                                         .order_by(KnowledgeSource.id))).scalars().all()
    due: list[int] = []
    for source in sources:
        interval = interval_of(source)
        if interval is None:
            continue
        if source.sync_status == SyncStatus.SYNCING and source.updated_at > now - STALE_CLAIM:
            continue
        last = source.updated_at if source.sync_status == SyncStatus.FAILED else source.last_synced_at
        if last is None or last <= now - interval:
            due.append(source.id)
    return due
