"""/kb: search the knowledge base and add documents to it."""

from __future__ import annotations

import hashlib

from sqlalchemy import case, or_, select

from bot.commands._format import clip
from bot.commands.errors import CommandError
from bot.commands.registry import CommandContext, CommandRegistry, Param
from bot.db.models import KnowledgeEntry, UserRole

MAX_CONTENT_CHARS = 20_000
SNIPPET_CHARS = 240


def register(registry: CommandRegistry) -> None:
    """Add /kb search and /kb add."""
    registry.add(
        "kb search",
        kb_search,
        role=UserRole.VIEWER,
        params=[
            Param("query", kind="text", max_length=200),
            Param("limit", kind="int", option=True, required=False, default=5, minimum=1, maximum=20),
        ],
    )
    registry.add(
        "kb add",
        kb_add,
        role=UserRole.OPERATOR,
        params=[Param("title", max_length=255), Param("content", kind="text", max_length=MAX_CONTENT_CHARS)],
    )


def _like_pattern(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def kb_search(ctx: CommandContext) -> str:
    """Search the knowledge base by words in titles and content: /kb search <words…>."""
    terms = [term for term in ctx.args["query"].split() if len(term) >= 2][:8]
    if not terms:
        raise CommandError("kb.query_too_short")
    conditions = []
    score = []
    for term in terms:
        pattern = _like_pattern(term)
        in_title = KnowledgeEntry.title.ilike(pattern, escape="\\")
        in_content = KnowledgeEntry.content.ilike(pattern, escape="\\")
        conditions.append(or_(in_title, in_content))
        score.append(case((in_title, 3), else_=0) + case((in_content, 1), else_=0))
    relevance = sum(score[1:], score[0])
    statement = (
        select(KnowledgeEntry.id, KnowledgeEntry.title, KnowledgeEntry.content, relevance.label("relevance"))
        .where(or_(*conditions))
        .order_by(relevance.desc(), KnowledgeEntry.id.desc())
        .limit(ctx.args["limit"])
    )
    async with ctx.services.session_factory() as session:
        rows = (await session.execute(statement)).all()
    if not rows:
        return ctx.t("kb.no_results", query=" ".join(terms))
    lines = [ctx.t("kb.results", count=len(rows), query=" ".join(terms))]
    for entry_id, title, content, _relevance in rows:
        lines.append(f"#{entry_id} *{title}*\n> {_snippet(content, terms)}")
    return "\n".join(lines)


def _snippet(content: str, terms: list[str]) -> str:
    lowered = content.lower()
    positions = [lowered.find(term.lower()) for term in terms]
    found = [p for p in positions if p >= 0]
    start = max(0, min(found) - SNIPPET_CHARS // 3) if found else 0
    prefix = "…" if start else ""
    return prefix + clip(content[start:], SNIPPET_CHARS)


async def kb_add(ctx: CommandContext) -> str:
    """Add a document to the knowledge base: /kb add "<title>" <content…>."""
    title = ctx.args["title"].strip()
    content = ctx.args["content"]
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    async with ctx.services.session_factory() as session:
        existing = (
            await session.execute(
                select(KnowledgeEntry.id).where(
                    KnowledgeEntry.source_id.is_(None), KnowledgeEntry.content_sha256 == digest
                )
            )
        ).scalar()
        if existing is not None:
            return ctx.t("kb.duplicate", id=existing)
        entry = KnowledgeEntry(title=title, content=content, content_sha256=digest, tags=[], language=ctx.language)
        session.add(entry)
        await session.commit()
    return ctx.t("kb.added", id=entry.id, title=title)
