"""Quality metrics folded with SQL arithmetic on both databases: the stored values must equal the
documented running means, several outcomes in one transaction included, and ranks must follow
the ranking score (only changed ranks written)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.db.engine import create_engine, session_factory
from bot.db.models import AiModel, AiProvider, AiQualityMetric, ProviderKind
from bot.engine.quality import Outcome, ranking, ranking_score, record_outcomes, record_rating


async def test_outcomes_fold_into_running_means_and_ranks(migrated_db: str) -> None:
    engine = create_engine(migrated_db)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            provider = AiProvider(name="quality-prov", kind=ProviderKind.OLLAMA, base_url="http://127.0.0.1:11434")
            good = AiModel(provider=provider, model_key="good-7b", display_name="good")
            bad = AiModel(provider=provider, model_key="bad-7b", display_name="bad")
            session.add_all([good, bad])
            await session.flush()
            good_id, bad_id = good.id, bad.id
        async with sessions() as session, session.begin():
            await record_outcomes(session, [
                Outcome(model_id=bad_id, category="code", succeeded=False, duration_ms=300.0, validation_score=20.0),
                Outcome(model_id=good_id, category="code", succeeded=True, duration_ms=100.0, validation_score=90.0),
            ])
        async with sessions() as session, session.begin():
            # Two outcomes for one row in one transaction, and one that reports only a tie-break.
            await record_outcomes(session, [
                Outcome(model_id=good_id, category="code", succeeded=True, duration_ms=200.0, validation_score=70.0),
                Outcome(model_id=good_id, category="code", tiebreak="won"),
                Outcome(model_id=bad_id, category="code", tiebreak="lost"),
            ])
            await record_rating(session, model_id=good_id, category="code", rating=5)
        async with sessions() as session:
            rows = {r.model_id: r for r in (await session.scalars(select(AiQualityMetric))).all()}
            table = await ranking(session, category="code")
        good_row, bad_row = rows[good_id], rows[bad_id]
        assert (good_row.runs, good_row.successes, good_row.failures) == (2, 2, 0)
        assert good_row.success_rate == pytest.approx(1.0)
        assert good_row.mean_time_ms == pytest.approx(150.0)
        assert good_row.validations == 2 and good_row.mean_validation_score == pytest.approx(80.0)
        assert (good_row.tiebreaks_won, good_row.tiebreaks_lost) == (1, 0)
        assert good_row.ratings_count == 1 and good_row.ratings_mean == pytest.approx(5.0)
        assert (bad_row.runs, bad_row.successes, bad_row.failures) == (1, 0, 1)
        assert bad_row.success_rate == pytest.approx(0.0)
        assert bad_row.mean_time_ms == pytest.approx(300.0) and bad_row.mean_validation_score == pytest.approx(20.0)
        assert (bad_row.tiebreaks_won, bad_row.tiebreaks_lost) == (0, 1)
        assert ranking_score(good_row) > ranking_score(bad_row)
        assert (good_row.rank, bad_row.rank) == (1, 2)
        assert [row.model for row in table] == ["good-7b", "bad-7b"]
    finally:
        await engine.dispose()
