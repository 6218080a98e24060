"""`ai_quality_metrics`: every model's track record per category, updated with each outcome.

Callers pass the session of the transaction that records the outcome itself (the queue's commit
hook), so the metrics and the result they describe are written together or not at all.

Ranking score within a category (higher is better; rank 1 is best):

    0.55 · (successes + 1) / (runs + 2)                     success rate, Laplace-smoothed
  + 0.30 · (Σ validation scores + 60·3) / (validations + 3) / 100   validation mean toward 60
  + 0.10 · (won + 1) / (won + lost + 2)                     tie-breaks
  + 0.05 · (ratings_mean + 1) / 6   (0.5 without ratings)   people's ratings (−1..5)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, cast

from sqlalchemy import Table, bindparam, case, func, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.base import utcnow
from bot.db.direct import execute_dml, read_in
from bot.db.models import AiModel, AiQualityMetric

VALIDATION_PRIOR = 60.0
VALIDATION_PRIOR_WEIGHT = 3.0
METRICS = cast(Table, AiQualityMetric.__table__)


class MetricLike(Protocol):
    """What the ranking score reads: an ORM row or a Core row of ai_quality_metrics."""

    @property
    def runs(self) -> int: ...
    @property
    def successes(self) -> int: ...
    @property
    def validations(self) -> int: ...
    @property
    def mean_validation_score(self) -> float | None: ...
    @property
    def tiebreaks_won(self) -> int: ...
    @property
    def tiebreaks_lost(self) -> int: ...
    @property
    def ratings_count(self) -> int: ...
    @property
    def ratings_mean(self) -> float | None: ...


def ranking_score(metric: MetricLike) -> float:
    """The documented ranking score of one metrics row."""
    success = (metric.successes + 1) / (metric.runs + 2)
    validated = metric.validations * (metric.mean_validation_score or 0.0)
    validation = (validated + VALIDATION_PRIOR * VALIDATION_PRIOR_WEIGHT) / (
        metric.validations + VALIDATION_PRIOR_WEIGHT
    )
    tiebreaks = (metric.tiebreaks_won + 1) / (metric.tiebreaks_won + metric.tiebreaks_lost + 2)
    ratings = 0.5 if not metric.ratings_count else ((metric.ratings_mean or 0.0) + 1) / 6
    return 0.55 * success + 0.30 * validation / 100 + 0.10 * tiebreaks + 0.05 * ratings


async def _metric_row(session: AsyncSession, *, model_id: int, category: str) -> AiQualityMetric:
    query = select(AiQualityMetric).where(
        AiQualityMetric.model_id == model_id, AiQualityMetric.category == category
    )
    if session.bind is not None and session.bind.dialect.name != "sqlite":
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is not None:
        return row
    row = AiQualityMetric(model_id=model_id, category=category, runs=0, successes=0, failures=0,
                          success_rate=0.0, mean_time_ms=0.0, validations=0, tiebreaks_won=0,
                          tiebreaks_lost=0, ratings_count=0)
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:  # another daemon created it between our select and insert
        existing = await session.scalar(query)
        if existing is None:
            raise
        return existing
    return row


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one execution, validation or tie-break says about one model."""

    model_id: int
    category: str
    succeeded: bool | None = None
    duration_ms: float | None = None
    validation_score: float | None = None
    tiebreak: Literal["won", "lost"] | None = None
    at: datetime | None = None


def _fold_statement() -> Any:
    """One UPDATE that folds an outcome into a metrics row, as SQL arithmetic on the stored values.

    Parameters zero out what an outcome does not report, so every outcome of a group commit is one
    executemany. Derived columns are assigned first and computed from the old values plus the
    deltas: MySQL/MariaDB apply SET assignments left to right, SQLite from the old row; written
    this way both give the same result.
    """
    runs_after = METRICS.c.runs + bindparam("d_runs")
    successes_after = METRICS.c.successes + bindparam("d_successes")
    validations_after = METRICS.c.validations + bindparam("d_validations")
    previous_score = func.coalesce(METRICS.c.mean_validation_score, 0.0)
    return (
        update(METRICS)
        .where(METRICS.c.model_id == bindparam("b_model"), METRICS.c.category == bindparam("b_category"))
        .ordered_values(
            (METRICS.c.success_rate,
             case((runs_after > 0, successes_after * 1.0 / runs_after), else_=METRICS.c.success_rate)),
            (METRICS.c.mean_time_ms,
             case((bindparam("has_duration") == 1,
                   METRICS.c.mean_time_ms + (bindparam("duration_ms") - METRICS.c.mean_time_ms) / runs_after),
                  else_=METRICS.c.mean_time_ms)),
            (METRICS.c.mean_validation_score,
             case((bindparam("d_validations") == 1,
                   previous_score + (bindparam("score") - previous_score) / validations_after),
                  else_=METRICS.c.mean_validation_score)),
            (METRICS.c.runs, runs_after),
            (METRICS.c.successes, successes_after),
            (METRICS.c.failures, METRICS.c.failures + bindparam("d_failures")),
            (METRICS.c.validations, validations_after),
            (METRICS.c.tiebreaks_won, METRICS.c.tiebreaks_won + bindparam("d_won")),
            (METRICS.c.tiebreaks_lost, METRICS.c.tiebreaks_lost + bindparam("d_lost")),
            (METRICS.c.last_used_at, bindparam("at", type_=METRICS.c.last_used_at.type)),
            (METRICS.c.updated_at, bindparam("at", type_=METRICS.c.updated_at.type)),
        )
    )


_FOLD = _fold_statement()


def _fold_params(outcome: Outcome) -> dict[str, Any]:
    ran = outcome.succeeded is not None
    return {
        "b_model": outcome.model_id, "b_category": outcome.category,
        "d_runs": int(ran), "d_successes": int(outcome.succeeded is True),
        "d_failures": int(outcome.succeeded is False),
        "has_duration": int(ran and outcome.duration_ms is not None), "duration_ms": float(outcome.duration_ms or 0.0),
        "d_validations": int(outcome.validation_score is not None), "score": float(outcome.validation_score or 0.0),
        "d_won": int(outcome.tiebreak == "won"), "d_lost": int(outcome.tiebreak == "lost"),
        "at": outcome.at or utcnow(),
    }


def _insert_missing() -> Any:
    return sqlite_insert(METRICS).on_conflict_do_nothing(index_elements=["model_id", "category"])


def _insert_missing_mysql() -> Any:
    insert_statement = mysql_insert(METRICS)
    return insert_statement.on_duplicate_key_update(model_id=insert_statement.inserted.model_id)


# Built once: building a statement costs more Python than running it.
_INSERT_MISSING = {"sqlite": _insert_missing(), "mysql": _insert_missing_mysql()}
_CATEGORY_ROWS = select(METRICS).where(METRICS.c.category == bindparam("b_category"))


async def _ensure_rows(session: AsyncSession, pairs: list[tuple[int, str]]) -> None:
    """Create missing metrics rows; a row another daemon creates meanwhile is simply kept."""
    now = utcnow()
    rows = [{"model_id": model_id, "category": category, "runs": 0, "successes": 0, "failures": 0,
             "success_rate": 0.0, "mean_time_ms": 0.0, "validations": 0, "tiebreaks_won": 0, "tiebreaks_lost": 0,
             "ratings_count": 0, "updated_at": now} for model_id, category in pairs]
    sqlite = session.bind is not None and session.bind.dialect.name == "sqlite"
    await execute_dml(session, _INSERT_MISSING["sqlite" if sqlite else "mysql"], rows)


async def record_outcomes(session: AsyncSession, outcomes: list[Outcome]) -> None:
    """Fold outcomes into the metrics and re-rank the touched categories, in the caller's transaction.

    Plain SQL on the stored values (no read-modify-write), in a stable row order so two daemons
    updating the same models never deadlock; re-ranking writes only the ranks that changed.
    """
    if not outcomes:
        return
    ordered = sorted(outcomes, key=lambda o: (o.model_id, o.category))
    await _ensure_rows(session, sorted({(o.model_id, o.category) for o in ordered}))
    await execute_dml(session, _FOLD, [_fold_params(outcome) for outcome in ordered])
    for category in sorted({o.category for o in ordered}):
        await rerank(session, category)


async def record_rating(session: AsyncSession, *, model_id: int, category: str, rating: int) -> None:
    """Fold a person's rating (−1..5) into the model's metrics for the category."""
    if not -1 <= rating <= 5:
        raise ValueError("a rating is between -1 and 5")
    row = await _metric_row(session, model_id=model_id, category=category)
    previous = row.ratings_mean or 0.0
    row.ratings_count += 1
    row.ratings_mean = previous + (rating - previous) / row.ratings_count
    await session.flush()
    await rerank(session, category)


_SET_RANK = (
    update(METRICS).where(METRICS.c.id == bindparam("b_id")).values(rank=bindparam("b_rank"))
)


async def rerank(session: AsyncSession, category: str) -> None:
    """Recompute `rank` for every model in a category from `ranking_score`; writes only changes.

    Usually no rank changes, so no row is written (on MariaDB: no row of the category is locked).
    """
    # Pending ORM changes of the caller (a rating) are flushed first: they are part of the ranking.
    rows = (await read_in(session, _CATEGORY_ROWS, {"b_category": category})).all()
    ranked = sorted(rows, key=lambda r: (-ranking_score(cast(MetricLike, r)), r.model_id))
    changed = [{"b_id": row.id, "b_rank": position} for position, row in enumerate(ranked, start=1)
               if row.rank != position]
    if changed:
        await execute_dml(session, _SET_RANK, changed)


@dataclass(frozen=True, slots=True)
class RankingRow:
    """One line of `orchestrator ranking`."""

    rank: int
    category: str
    model: str
    runs: int
    success_rate: float
    mean_validation_score: float | None
    mean_time_ms: float
    tiebreaks_won: int
    tiebreaks_lost: int
    score: float


async def ranking(session: AsyncSession, *, category: str | None = None) -> list[RankingRow]:
    """The ranking, best first per category."""
    query = select(AiQualityMetric, AiModel).join(AiModel, AiModel.id == AiQualityMetric.model_id)
    if category:
        query = query.where(AiQualityMetric.category == category)
    query = query.order_by(AiQualityMetric.category, AiQualityMetric.rank)
    rows = []
    for metric, model in (await session.execute(query)).all():
        rows.append(RankingRow(
            rank=metric.rank or 0, category=metric.category, model=model.model_key, runs=metric.runs,
            success_rate=metric.success_rate, mean_validation_score=metric.mean_validation_score,
            mean_time_ms=metric.mean_time_ms, tiebreaks_won=metric.tiebreaks_won,
            tiebreaks_lost=metric.tiebreaks_lost, score=round(ranking_score(metric), 4),
        ))
    return rows
