"""The hallucination checker inside the engine: what a check sees, when recovery runs, which answer stays.

Every subtask's answer is checked (bot/engine/hallucination) against its request, its dependency
context, the validator's independent answer and the knowledge base. A suspect answer is handled
by one of two mechanisms, never both:

- the validator disagrees with it (divergence above the threshold): the tie-break already asks a
  third model to judge, and the suspicion's reasons are added to the review the judge reads;
- otherwise (the validator agreed, or the problem is inside the answer: a loop, a contradiction,
  an impossible date): recovery asks a *different* model to answer the same saved request, checks
  that answer too, and keeps whichever scores higher.

The checker always runs with the lexical embedder: it is what the confidence was calibrated with
(docs/hallucination.md), it costs no model call, and it gives the same score on every daemon.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from bot.db.base import utcnow
from bot.db.engine import LazyReads, Reads
from bot.db.models import KnowledgeEntry, Task, TaskStatus
from bot.engine.embeddings import LexicalEmbedder
from bot.engine.hallucination import CheckInput, HallucinationChecker, StreamStats
from bot.engine.providers.port import ChatMessage
from bot.logs import get_logger

log = get_logger(__name__)

_WORD = re.compile(r"\w{4,}", re.UNICODE)
MAX_PASSAGES = 5
MAX_PASSAGE_CHARS = 2000
MAX_REASONS = 5
KNOWLEDGE = cast(Table, KnowledgeEntry.__table__)


def new_checker() -> HallucinationChecker:
    """The engine's checker (lexical embedder: the calibrated, model-free configuration)."""
    return HallucinationChecker(LexicalEmbedder())


class KnowledgeIndex:
    """Knowledge passages for checks, skipping the full-text query while the knowledge base is empty.

    Whether it has any row is re-read at most every `ttl_s`, so a first document added reaches
    checks that start up to that much later (docs/engine.md, "Speed").
    """

    def __init__(self, *, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._checked_at = float("-inf")
        self._has_rows = False

    async def passages(self, connection: Reads, question: str) -> list[str]:
        """Like `knowledge_passages`, without a query while the knowledge base is known to be empty."""
        now = time.monotonic()
        if now - self._checked_at >= self.ttl_s:
            self._has_rows = (await connection.execute(select(KNOWLEDGE.c.id).limit(1))).first() is not None
            self._checked_at = now
        if not self._has_rows:
            return []
        return await knowledge_passages(connection, question)


def _dialect(reads: Reads) -> str:
    if isinstance(reads, LazyReads):
        return reads.dialect_name
    if isinstance(reads, AsyncConnection):
        return reads.dialect.name
    if isinstance(reads, AsyncSession):
        return reads.get_bind().dialect.name
    raise TypeError(f"cannot tell the database of {type(reads).__name__}")


async def knowledge_passages(session: Reads, question: str) -> list[str]:
    """Knowledge-base passages that share the question's longer words (any of them), best first.

    Any-word matching on purpose: a check needs passages that may confirm or contradict a claim,
    and requiring every word of a long subtask prompt would match nothing.
    """
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(question)))[:24]
    if not words:
        return []
    dialect = _dialect(session)
    if dialect == "sqlite":
        statement = text(
            "SELECT k.title, k.content FROM knowledge_base_fts JOIN knowledge_base k "
            "ON k.id = knowledge_base_fts.rowid WHERE knowledge_base_fts MATCH :match "
            "ORDER BY bm25(knowledge_base_fts) LIMIT :limit")
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
    else:
        statement = text(
            "SELECT k.title, k.content FROM knowledge_base k WHERE MATCH(k.title, k.content) "
            "AGAINST (:match IN NATURAL LANGUAGE MODE) LIMIT :limit")
        match = " ".join(words)
    try:
        rows = (await session.execute(statement, {"match": match, "limit": MAX_PASSAGES})).all()
    except DBAPIError as err:  # a database without the full-text index: the check runs without passages
        log.warning("knowledge lookup failed; checking without passages", error=str(err.orig)[:200])
        return []
    return [f"{title}\n{content}"[:MAX_PASSAGE_CHARS] for title, content in rows]


MAX_EARLIER = 3
_CURRENT, _EARLIER = aliased(Task), aliased(Task)
# Earlier answers to the same question in the same chat conversation (a follow-up asked again in
# a task's thread): what the drift detector compares with. The engine does not ask for a task
# outside a conversation (it would match nothing).
_EARLIER_ANSWERS = (
    select(_EARLIER.result)
    .join(_CURRENT, (_EARLIER.conversation_id == _CURRENT.conversation_id) & (_EARLIER.title == _CURRENT.title)
          & (_EARLIER.id < _CURRENT.id))
    .where(_CURRENT.id == bindparam("task_id"), _EARLIER.status == TaskStatus.COMPLETED,
           _EARLIER.result.is_not(None))
    .order_by(_EARLIER.id.desc())
    .limit(MAX_EARLIER)
)


async def earlier_answers(reads: Reads, task_id: int) -> list[str]:
    """The newest answers to this task's question asked earlier in its conversation."""
    rows = (await reads.execute(_EARLIER_ANSWERS, {"task_id": task_id})).all()
    return [str(row[0]) for row in rows if row[0]]


def check_input(*, prompt: str, context: str, answer: str, references: Sequence[str], knowledge: Sequence[str],
                stream: dict[str, Any] | None, earlier: Sequence[str] = ()) -> CheckInput:
    """One subtask answer and the evidence it is checked against."""
    stats = StreamStats(**stream) if stream else None
    return CheckInput(question=prompt, answer=answer, context=context, now=utcnow(),
                      reference_answers=[r for r in references if r.strip()], knowledge=list(knowledge),
                      stream_stats=stats, earlier_answers=list(earlier))


def reasons(report: dict[str, Any]) -> list[str]:
    """The findings' sentences a person reads, most severe first."""
    return [str(f["reason"]) for f in report.get("findings", [])[:MAX_REASONS]]


def recovery_messages(system: str, prompt: str, report: dict[str, Any]) -> list[ChatMessage]:
    """The saved request, for another model, with what was wrong in the first answer (not the answer itself).

    The suspect answer is left out so the second model does not anchor on it; the reasons tell it
    what to be careful about.
    """
    concerns = "\n".join(f"- {reason}" for reason in reasons(report)) or "- it could not be verified"
    note = ("Another model's answer to this request was flagged as a possible hallucination:\n"
            f"{concerns}\nAnswer the request yourself, completely. State only what you can support; say so "
            "when you are unsure.")
    return [ChatMessage("system", system), ChatMessage("user", f"{prompt}\n\n{note}")]


def keep_retry(original: dict[str, Any], retry: dict[str, Any]) -> bool:
    """The retry replaces the original only when it scores strictly higher (ties keep the first answer)."""
    return int(retry.get("confidence", 0)) > int(original.get("confidence", 0))
