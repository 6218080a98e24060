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

import math
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

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


async def load_candidates(session: AsyncSession, *, router: Router) -> list[Candidate]:
    """Enabled chat models of enabled providers that the router can reach."""
    routable = set(router.groups())
    query = (
        select(AiModel, AiProvider)
        .join(AiProvider, AiProvider.id == AiModel.provider_id)
        .where(AiModel.is_enabled.is_(True), AiModel.vanished_at.is_(None), AiProvider.is_enabled.is_(True))
        .order_by(AiModel.id)
    )
    candidates = []
    for model, provider in (await session.execute(query)).all():
        capabilities = model.capabilities or {}
        if capabilities.get("type") == "embedding" or capabilities.get("embedding") is True:
            continue
        if model.model_key not in routable:
            continue
        candidates.append(Candidate(
            model_id=model.id, key=model.model_key, family=family_of(model.model_key, model.family),
            provider_id=provider.id, provider_name=provider.name, is_local=provider.is_local,
            is_loaded=model.is_loaded, size_bytes=model.size_bytes,
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

    async def get(self, session: AsyncSession, *, router: Router) -> list[Candidate]:
        """The current candidates (a fresh read when stale or when the router's models changed)."""
        routable = frozenset(router.groups())
        now = time.monotonic()
        if now - self._loaded_at >= self.ttl_s or routable != self._routable:
            self._candidates = await load_candidates(session, router=router)
            self._loaded_at, self._routable = now, routable
        return list(self._candidates)


class Selector:
    """Scores candidates for a role; never returns a model in `exclude`."""

    def __init__(self, *, router: Router, prefer_smaller: Callable[[], bool] | None = None) -> None:
        self._router = router
        self._prefer_smaller = prefer_smaller or (lambda: False)

    async def choose(
        self,
        session: AsyncSession,
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
        # Core rows, not ORM objects: this runs for every choice and only reads.
        metrics = {
            row.model_id: row
            for row in (await session.execute(
                select(METRICS).where(METRICS.c.category == category,
                                      METRICS.c.model_id.in_([c.model_id for c in pool]))
            )).all()
        }
        total_runs = sum(m.runs for m in metrics.values())
        size_rank: dict[int, int] = {}
        if self._prefer_smaller():
            by_size = sorted(pool, key=lambda c: (c.size_bytes is None, c.size_bytes or 0))
            size_rank = {c.model_id: rank for rank, c in enumerate(by_size)}
        health = {h.deployment: h for h in self._router.health()}
        scored: list[tuple[float, int, Candidate, str]] = []
        for candidate in pool:
            metric = metrics.get(candidate.model_id)
            quality = ranking_score(metric) if metric else NEUTRAL_QUALITY
            runs = metric.runs if metric else 0
            explore = EXPLORATION * math.sqrt(math.log(total_runs + 1) / (runs + 1))
            score = quality + explore
            reasons = [f"quality {quality:.2f} over {runs} runs"]
            if candidate.is_loaded:
                score += LOADED_BONUS
                reasons.append("loaded")
            if candidate.is_local:
                score += LOCAL_BONUS
            state = health.get(f"{candidate.provider_name}/{candidate.key}")
            if state is not None:
                score -= BUSY_PENALTY * state.in_flight
                if state.cooling_down_s > 0:
                    score -= COOLING_PENALTY
                    reasons.append("cooling down")
            if diverse_from:
                if all(candidate.family != other.family for other in diverse_from):
                    score += OTHER_FAMILY_BONUS
                    reasons.append(f"other family ({candidate.family})")
                if all(candidate.provider_id != other.provider_id for other in diverse_from):
                    score += OTHER_PROVIDER_BONUS
                    reasons.append("other provider")
            if size_rank:
                score += SMALLER_BONUS * (1 - size_rank[candidate.model_id] / len(pool))
                reasons.append("smaller models preferred (VRAM)")
            if prefer_model_id is not None and candidate.model_id == prefer_model_id:
                score += 1.0
                reasons.append("configured preference")
            scored.append((score, -candidate.model_id, candidate, ", ".join(reasons)))
        score, _, best, reason = max(scored, key=lambda item: (item[0], item[1]))
        return Choice(candidate=best, score=score, reason=f"{best.key} for {category}: {reason}")
