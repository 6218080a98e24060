"""Choosing executors, validators and tie-breakers from history, load and what is loaded.

Score of a candidate for a category (higher wins; ties broken by model id for determinism):

    quality     ranking_score of its ai_quality_metrics row (0.5-ish for a model never seen)
  + explore     0.15 · sqrt(ln(total runs in the category + 1) / (its runs + 1))   (UCB: new models get tried)
  + loaded      0.10 when already loaded (no model swap)
  + local       0.05 for a local provider
  − busy        0.03 per request the router has in flight on it
  − cooling     0.50 while the router cools the deployment down after failures
  + diversity   validators and tie-breakers only: 0.10 for another family, 0.05 for another provider
  + smaller     0.30 × (1 − size rank / candidates) while the monitor asks for smaller models
                (VRAM nearly full): the smallest candidate gains the most

A model is identified by its key on any provider: the same weights served by two providers are
one model, so "a model never validates its own work" holds across providers too.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, select

from bot.db.engine import Reads
from bot.db.models import AiModel, AiProvider
from bot.engine.providers.router import Router
from bot.engine.quality import METRICS, ranking_score

EXPLORATION = 0.15
LOADED_BONUS = 0.10
LOCAL_BONUS = 0.05
BUSY_PENALTY = 0.03
COOLING_PENALTY = 0.50
OTHER_FAMILY_BONUS = 0.10
OTHER_PROVIDER_BONUS = 0.05
SMALLER_BONUS = 0.30
NEUTRAL_QUALITY = 0.5

MODELS = cast(Table, AiModel.__table__)
PROVIDERS = cast(Table, AiProvider.__table__)
# Core columns, not ORM objects: read for every candidate list, by a session or a plain connection.
_CANDIDATES = (
    select(MODELS.c.id, MODELS.c.model_key, MODELS.c.family, MODELS.c.capabilities, MODELS.c.is_loaded,
           MODELS.c.size_bytes, PROVIDERS.c.id.label("provider_id"), PROVIDERS.c.name.label("provider_name"),
           PROVIDERS.c.is_local)
    .join(PROVIDERS, PROVIDERS.c.id == MODELS.c.provider_id)
    .where(MODELS.c.is_enabled.is_(True), MODELS.c.vanished_at.is_(None), PROVIDERS.c.is_enabled.is_(True))
    .order_by(MODELS.c.id)
)
# Only what the score reads (no timestamps to convert per row).
_CATEGORY_METRICS = select(
    METRICS.c.model_id, METRICS.c.runs, METRICS.c.successes, METRICS.c.validations, METRICS.c.mean_validation_score,
    METRICS.c.tiebreaks_won, METRICS.c.tiebreaks_lost, METRICS.c.ratings_count, METRICS.c.ratings_mean,
).where(METRICS.c.category == bindparam("b_category"))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model that can be routed to, with what selection needs to know about it."""

    model_id: int
    key: str
    family: str
    provider_id: int
    provider_name: str
    is_local: bool
    is_loaded: bool
    size_bytes: int | None = None

    @property
    def identity(self) -> str:
        """The model regardless of provider: its key without publisher prefix or file suffix."""
        return model_identity(self.key)


@dataclass(frozen=True, slots=True)
class Choice:
    """The chosen model and the one-line reason logged with the choice."""

    candidate: Candidate
    score: float
    reason: str

    def as_dict(self) -> dict[str, object]:
        """Stored in job steps so a resumed subtask keeps its models."""
        c = self.candidate
        return {"model_id": c.model_id, "key": c.key, "family": c.family, "provider": c.provider_name,
                "size_bytes": c.size_bytes, "score": round(self.score, 4), "reason": self.reason}


@functools.lru_cache(maxsize=4096)
def model_identity(key: str) -> str:
    """`lmstudio-community/Qwen2.5-7B-Instruct-GGUF/qwen2.5-7b-q4.gguf` → `qwen2.5-7b-q4`."""
    last = key.strip().lower().rstrip("/").split("/")[-1]
    return re.sub(r"\.(gguf|bin|safetensors)$", "", last)


def family_of(key: str, declared: str | None) -> str:
    """The declared family, else the leading letters of the model name (qwen, llama, gemma…)."""
    if declared:
        return declared.strip().lower()
    match = re.match(r"[a-z]+", model_identity(key))
    return match.group(0) if match else model_identity(key)


async def load_candidates(session: Reads, *, router: Router) -> list[Candidate]:
    """Enabled chat models of enabled providers that the router can reach."""
    routable = router.group_names()
    candidates = []
    for row in await session.execute(_CANDIDATES):
        capabilities = row.capabilities or {}
        if capabilities.get("type") == "embedding" or capabilities.get("embedding") is True:
            continue
        if row.model_key not in routable:
            continue
        candidates.append(Candidate(
            model_id=int(row.id), key=row.model_key, family=family_of(row.model_key, row.family),
            provider_id=int(row.provider_id), provider_name=row.provider_name, is_local=bool(row.is_local),
            is_loaded=bool(row.is_loaded), size_bytes=row.size_bytes,
        ))
    return candidates


class CandidateCache:
    """`load_candidates`, re-read at most every `ttl_s`: every model choice needs the list, and it
    changes only when models are enabled, loaded or synced (seen within a second). The quality
    metrics that rank the candidates are always read fresh by `Selector.choose`."""

    def __init__(self, *, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._loaded_at = float("-inf")
        self._routable: frozenset[str] = frozenset()
        self._candidates: list[Candidate] = []

    async def get(self, session: Reads, *, router: Router) -> list[Candidate]:
        """The current candidates (a fresh read when stale or when the router's models changed)."""
        routable = router.group_names()
        now = time.monotonic()
        if now - self._loaded_at >= self.ttl_s or routable != self._routable:
            self._candidates = await load_candidates(session, router=router)
            self._loaded_at, self._routable = now, routable
        return list(self._candidates)


class MetricsCache:
    """The metrics rows of each category that selection reads, kept until they may have changed.

    Every model choice ranks the candidates by their metrics; reading them per choice was the
    biggest query of a subtask. The owner calls `invalidate` once outcomes it recorded have
    committed (the engine does, on each subtask job's success), so within one daemon a choice
    always sees every committed outcome; outcomes recorded by other daemons, and people's ratings,
    are seen within `ttl_s`.
    """

    def __init__(self, *, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._rows: dict[str, tuple[float, dict[int, Any]]] = {}

    def invalidate(self) -> None:
        """Forget every category (the next choice reads again)."""
        self._rows.clear()

    async def get(self, session: Reads, category: str) -> dict[int, Any]:
        """model id → metrics row of the category."""
        now = time.monotonic()
        cached = self._rows.get(category)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        rows = {row.model_id: row for row in await session.execute(_CATEGORY_METRICS, {"b_category": category})}
        self._rows[category] = (now, rows)
        return rows


class Selector:
    """Scores candidates for a role; never returns a model in `exclude`."""

    def __init__(self, *, router: Router, prefer_smaller: Callable[[], bool] | None = None,
                 metrics: MetricsCache | None = None) -> None:
        self._router = router
        self._prefer_smaller = prefer_smaller or (lambda: False)
        self._metrics = metrics

    async def choose(
        self,
        session: Reads,
        *,
        category: str,
        exclude: Collection[str] = (),
        diverse_from: Sequence[Candidate] = (),
        prefer_model_id: int | None = None,
        candidates: Sequence[Candidate] | None = None,
    ) -> Choice | None:
        """The best candidate not in `exclude` (model identities), or None when there is none."""
        pool = list(candidates) if candidates is not None else await load_candidates(session, router=self._router)
        excluded = {model_identity(key) for key in exclude}
        pool = [c for c in pool if c.identity not in excluded]
        if not pool:
            return None
        # Core rows of one prebuilt statement: this runs for every choice and only reads. A category
        # has one row per model that ran in it, so reading all of them is cheaper than building an
        # IN list per call.
        if self._metrics is not None:
            metrics = await self._metrics.get(session, category)
        else:
            metrics = {row.model_id: row
                       for row in await session.execute(_CATEGORY_METRICS, {"b_category": category})}
        wanted = {c.model_id for c in pool}
        metrics = {model_id: row for model_id, row in metrics.items() if model_id in wanted}
        total_runs = sum(m.runs for m in metrics.values())
        size_rank: dict[int, int] = {}
        if self._prefer_smaller():
            by_size = sorted(pool, key=lambda c: (c.size_bytes is None, c.size_bytes or 0))
            size_rank = {c.model_id: rank for rank, c in enumerate(by_size)}
        health = {h.deployment: h for h in self._router.health()}

        def evaluate(candidate: Candidate, reasons: list[str] | None) -> float:
            """The candidate's score; with `reasons`, also why (only the winner's are ever read)."""
            metric = metrics.get(candidate.model_id)
            quality = ranking_score(metric) if metric else NEUTRAL_QUALITY
            runs = metric.runs if metric else 0
            score = quality + EXPLORATION * math.sqrt(math.log(total_runs + 1) / (runs + 1))
            if reasons is not None:
                reasons.append(f"quality {quality:.2f} over {runs} runs")
            if candidate.is_loaded:
                score += LOADED_BONUS
                if reasons is not None:
                    reasons.append("loaded")
            if candidate.is_local:
                score += LOCAL_BONUS
            state = health.get(f"{candidate.provider_name}/{candidate.key}")
            if state is not None:
                score -= BUSY_PENALTY * state.in_flight
                if state.cooling_down_s > 0:
                    score -= COOLING_PENALTY
                    if reasons is not None:
                        reasons.append("cooling down")
            if diverse_from:
                if all(candidate.family != other.family for other in diverse_from):
                    score += OTHER_FAMILY_BONUS
                    if reasons is not None:
                        reasons.append(f"other family ({candidate.family})")
                if all(candidate.provider_id != other.provider_id for other in diverse_from):
                    score += OTHER_PROVIDER_BONUS
                    if reasons is not None:
                        reasons.append("other provider")
            if size_rank:
                score += SMALLER_BONUS * (1 - size_rank[candidate.model_id] / len(pool))
                if reasons is not None:
                    reasons.append("smaller models preferred (VRAM)")
            if prefer_model_id is not None and candidate.model_id == prefer_model_id:
                score += 1.0
                if reasons is not None:
                    reasons.append("configured preference")
            return score

        score, _, best = max(((evaluate(c, None), -c.model_id, c) for c in pool), key=lambda item: (item[0], item[1]))
        why: list[str] = []
        evaluate(best, why)
        reason = ", ".join(why)
        return Choice(candidate=best, score=score, reason=f"{best.key} for {category}: {reason}")
