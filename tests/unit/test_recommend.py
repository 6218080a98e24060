"""Ranking models per task type: requirements, hints, size, locality, and the quality record."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.db.base import Base
from bot.db.engine import create_engine, session_factory
from bot.db.models import AiModel, AiProvider, AiQualityMetric, ProviderKind
from bot.engine.providers.port import ProviderError
from bot.engine.providers.recommend import Candidate, QualityStats, normalise_task, rank, recommend

CATALOGUE = [
    Candidate(provider="lms", model="qwen2.5-coder-7b-instruct", parameters=7e9, context_length=32768, tool_use=True),
    Candidate(provider="lms", model="llama-3.2-3b-instruct", parameters=3e9, context_length=131072, loaded=True),
    Candidate(provider="lms", model="deepseek-r1-distill-qwen-14b", parameters=14e9, context_length=32768),
    Candidate(provider="lms", model="qwen2.5-vl-7b-instruct", parameters=7e9, vision=True),
    Candidate(provider="lms", model="nomic-embed-text-v1.5", model_type="embedding", parameters=1.4e8),
    Candidate(provider="cloud", model="big-remote-70b", parameters=7e10, is_local=False, context_length=131072),
]


def top(task: str, candidates: list[Candidate] = CATALOGUE) -> str:
    return rank(task, candidates)[0].model


def test_each_task_gets_a_fitting_model() -> None:
    assert top("code") == "qwen2.5-coder-7b-instruct"
    assert top("reasoning") == "deepseek-r1-distill-qwen-14b"
    assert top("vision") == "qwen2.5-vl-7b-instruct"
    assert top("embedding") == "nomic-embed-text-v1.5"


def test_requirements_exclude_models_that_cannot_do_the_task() -> None:
    assert [r.model for r in rank("vision", CATALOGUE)] == ["qwen2.5-vl-7b-instruct"]
    assert "nomic-embed-text-v1.5" not in [r.model for r in rank("chat", CATALOGUE)]
    assert [r.model for r in rank("embedding", CATALOGUE)] == ["nomic-embed-text-v1.5"]


def test_local_models_are_preferred_over_an_equal_remote_one() -> None:
    twins = [
        Candidate(provider="cloud", model="same-8b-instruct", parameters=8e9, is_local=False),
        Candidate(provider="lms", model="same-8b-instruct", parameters=8e9),
    ]
    assert rank("chat", twins)[0].provider == "lms"


def test_quality_record_outweighs_name_and_size_once_it_has_runs() -> None:
    coder = CATALOGUE[0]
    poor = QualityStats(runs=30, success_rate=0.2, mean_validation_score=30)
    good = QualityStats(runs=30, success_rate=0.95, mean_validation_score=90)
    failing = Candidate(**{**_fields(coder), "quality": poor})
    general = Candidate(**{**_fields(CATALOGUE[1]), "quality": good})
    assert top("code", [failing, general]) == "llama-3.2-3b-instruct"
    few_runs = Candidate(**{**_fields(coder), "quality": QualityStats(runs=1, success_rate=0.0)})
    assert top("code", [few_runs, CATALOGUE[1]]) == "qwen2.5-coder-7b-instruct"


def test_the_reason_is_one_line_naming_the_deciding_facts() -> None:
    best = rank("code", CATALOGUE)[0]
    assert "\n" not in best.reason
    assert best.reason.startswith("qwen2.5-coder-7b-instruct on lms:")
    assert "code model by name ('coder')" in best.reason
    assert "local" in best.reason
    record = QualityStats(runs=12, success_rate=0.75, mean_validation_score=81)
    quality = Candidate(provider="p", model="m", quality=record)
    assert "75% success over 12 chat runs, validation 81/100" in rank("chat", [quality])[0].reason


def test_task_aliases_and_unknown_tasks() -> None:
    assert normalise_task("Summarize") == "summarise"
    with pytest.raises(ProviderError, match="use one of"):
        normalise_task("dance")


def _fields(candidate: Candidate) -> dict[str, object]:
    return {name: getattr(candidate, name) for name in Candidate.__slots__}


async def test_recommend_reads_the_catalogue_and_quality_metrics(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        provider = AiProvider(name="lms", kind=ProviderKind.LMSTUDIO, base_url="http://127.0.0.1:1", settings={})
        session.add(provider)
        await session.flush()
        for key, params in (("qwen2.5-coder-7b", "7B"), ("llama-3.1-8b-instruct", "8B"), ("gone-coder-30b", "30B")):
            facts = {"type": "llm", "parameters": params}
            session.add(AiModel(provider_id=provider.id, model_key=key, capabilities=facts))
        await session.flush()
        gone = await session.scalar(select(AiModel).where(AiModel.model_key == "gone-coder-30b"))
        assert gone is not None
        from bot.db.base import utcnow

        gone.vanished_at = utcnow()
    async with sessions() as session:
        before = await recommend(session, "code")
    assert [r.model for r in before] == ["qwen2.5-coder-7b", "llama-3.1-8b-instruct"]

    async with sessions() as session, session.begin():
        llama = await session.scalar(select(AiModel).where(AiModel.model_key == "llama-3.1-8b-instruct"))
        coder = await session.scalar(select(AiModel).where(AiModel.model_key == "qwen2.5-coder-7b"))
        assert llama is not None
        assert coder is not None
        session.add(
            AiQualityMetric(
                model_id=llama.id, category="code", runs=40, successes=38, success_rate=0.95, mean_validation_score=88.0
            )
        )
        session.add(
            AiQualityMetric(
                model_id=coder.id, category="code", runs=40, successes=10, success_rate=0.25, mean_validation_score=40.0
            )
        )
        session.add(AiQualityMetric(model_id=coder.id, category="chat", runs=40, successes=40, success_rate=1.0))
    async with sessions() as session:
        after = await recommend(session, "code")
    await engine.dispose()
    assert after[0].model == "llama-3.1-8b-instruct"
    assert "95% success over 40 code runs" in after[0].reason
