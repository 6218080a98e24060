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
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.base import utcnow
from bot.db.models import AiModel, AiQualityMetric

VALIDATION_PRIOR = 60.0
VALIDATION_PRIOR_WEIGHT = 3.0


def ranking_score(metric: AiQualityMetric) -> float:
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


async def record_outcomes(session: AsyncSession, outcomes: list[Outcome]) -> None:
    """Fold outcomes into the metrics and re-rank the touched categories, in the caller's transaction."""
    touched: set[str] = set()
    # Lock rows in a stable order so two daemons updating the same models never deadlock.
    for outcome in sorted(outcomes, key=lambda o: (o.model_id, o.category)):
        row = await _metric_row(session, model_id=outcome.model_id, category=outcome.category)
        if outcome.succeeded is not None:
            row.runs += 1
            if outcome.succeeded:
                row.successes += 1
            else:
                row.failures += 1
            row.success_rate = row.successes / row.runs
            if outcome.duration_ms is not None:
                row.mean_time_ms += (outcome.duration_ms - row.mean_time_ms) / row.runs
        if outcome.validation_score is not None:
            previous = row.mean_validation_score or 0.0
            row.validations += 1
            row.mean_validation_score = previous + (outcome.validation_score - previous) / row.validations
        if outcome.tiebreak == "won":
            row.tiebreaks_won += 1
        elif outcome.tiebreak == "lost":
            row.tiebreaks_lost += 1
        row.last_used_at = outcome.at or utcnow()
        touched.add(outcome.category)
    await session.flush()
    for category in sorted(touched):
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


async def rerank(session: AsyncSession, category: str) -> None:
    """Recompute `rank` for every model in a category from `ranking_score`."""
    rows = list((await session.scalars(select(AiQualityMetric).where(AiQualityMetric.category == category))).all())
    rows.sort(key=lambda r: (-ranking_score(r), r.model_id))
    for position, row in enumerate(rows, start=1):
        row.rank = position
    await session.flush()


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
