"""Which model for which job: a ranking by task type, each choice explained in one line.

Score = fit for the task (hard requirements such as vision or embeddings exclude a model; name
hints such as "coder" or "r1" and the needed context add points) + size (more parameters help
most with code and reasoning) + locality (local servers first: no cost, no data leaving the
machine) + loaded (no load wait) − a large penalty for a local model that could never fit in this
machine's memory (estimated as in vram.py, at 4096 tokens of context) + track record from
`ai_quality_metrics` for that category, weighted by how many runs back it (full weight from 20
runs). The weights are in `WEIGHTS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import AiModel, AiProvider, AiQualityMetric
from bot.engine.providers.port import ProviderError
from bot.engine.providers.vram import estimate_memory, gib, parse_parameter_count, quant_bits

TASK_TYPES: tuple[str, ...] = (
    "chat", "code", "reasoning", "planning", "validation", "summarise", "translate", "extract", "vision",
    "embedding",
)  # fmt: skip
ALIASES = {"summarize": "summarise", "summary": "summarise", "plan": "planning", "validate": "validation",
           "review": "validation", "coding": "code", "translation": "translate", "extraction": "extract",
           "embeddings": "embedding", "embed": "embedding", "think": "reasoning"}  # fmt: skip

NAME_HINTS: dict[str, tuple[str, ...]] = {
    "code": ("coder", "code", "codestral", "starcoder", "devstral", "codegemma", "granite-code"),
    "reasoning": ("r1", "reason", "qwq", "think", "magistral", "o1", "o3", "o4"),
    "planning": ("r1", "reason", "qwq", "think", "magistral"),
    "validation": ("r1", "reason", "qwq", "think", "judge", "magistral"),
    "translate": ("translat", "nllb", "madlad", "tower", "aya", "seamless"),
    "chat": ("instruct", "chat", "-it"),
    "summarise": ("instruct", "-it"),
    "extract": ("instruct", "-it"),
    "vision": ("vl", "vision", "llava", "pixtral", "gemma-3"),
    "embedding": ("embed", "bge", "e5", "gte", "minilm", "nomic"),
}
# How much a task gains from a bigger model (multiplies the size points).
SIZE_APPETITE = {"code": 1.0, "reasoning": 1.0, "planning": 1.0, "validation": 1.0, "chat": 0.5,
                 "summarise": 0.5, "translate": 0.6, "extract": 0.4, "vision": 0.6, "embedding": 0.0}  # fmt: skip
WEIGHTS = {"hint": 20.0, "size": 5.0, "local": 15.0, "loaded": 5.0, "context": 10.0, "tools": 8.0,
           "success": 40.0, "validation": 0.3, "full_confidence_runs": 20.0, "too_big": 100.0}  # fmt: skip


@dataclass(frozen=True, slots=True)
class QualityStats:
    """A model's record in one category (from ai_quality_metrics)."""

    runs: int
    success_rate: float
    mean_validation_score: float | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """What ranking looks at for one model on one provider."""

    provider: str
    model: str
    is_local: bool = True
    loaded: bool = False
    model_type: str = "llm"
    vision: bool = False
    tool_use: bool = False
    parameters: float | None = None
    context_length: int | None = None
    size_bytes: int | None = None
    quantization: str | None = None
    quality: QualityStats | None = None
    # Estimated memory to run it, and what this machine has (local models only); None = unknown.
    needs_bytes: int | None = None
    memory_total_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A ranked model and why."""

    provider: str
    model: str
    score: float
    reason: str


def normalise_task(task_type: str) -> str:
    """The canonical task type, or ProviderError listing the known ones."""
    task = task_type.strip().lower()
    task = ALIASES.get(task, task)
    if task not in TASK_TYPES:
        raise ProviderError(
            f"unknown task type {task_type!r}", hint=f"use one of: {', '.join(TASK_TYPES)}"
        )
    return task


def rank(task_type: str, candidates: Iterable[Candidate]) -> list[Recommendation]:
    """Candidates that can do the task, best first, each with a one-line reason."""
    task = normalise_task(task_type)
    ranked = []
    for candidate in candidates:
        scored = _score(task, candidate)
        if scored is not None:
            ranked.append(scored)
    ranked.sort(key=lambda r: (-r.score, r.provider, r.model))
    return ranked


def _params(candidate: Candidate) -> float | None:
    if candidate.parameters:
        return candidate.parameters
    if candidate.size_bytes:
        return candidate.size_bytes * 8 / (quant_bits(candidate.quantization) or 4.85)
    return None


def _score(task: str, candidate: Candidate) -> Recommendation | None:
    is_embedding = candidate.model_type == "embedding"
    if (task == "embedding") != is_embedding:
        return None
    if task == "vision" and not candidate.vision:
        return None
    score = 0.0
    reasons: list[str] = []
    if (
        candidate.is_local
        and candidate.needs_bytes is not None
        and candidate.memory_total_bytes is not None
        and candidate.needs_bytes > candidate.memory_total_bytes
    ):
        score -= WEIGHTS["too_big"]
        reasons.append(
            f"too big for this machine (needs ~{gib(candidate.needs_bytes)}, has {gib(candidate.memory_total_bytes)})"
        )
    name = candidate.model.lower()
    hint = next((h for h in NAME_HINTS.get(task, ()) if h in name), None)
    if hint is not None:
        score += WEIGHTS["hint"]
        reasons.append(f"{task} model by name ('{hint}')")
    params = _params(candidate)
    if params:
        size_points = WEIGHTS["size"] * SIZE_APPETITE[task] * math.log2(1 + params / 1e9)
        score += size_points
        reasons.append(f"{params / 1e9:.1f}B parameters")
    if task in ("summarise", "extract") and candidate.context_length:
        context_points = min(WEIGHTS["context"], 2.5 * max(0.0, math.log2(candidate.context_length / 4096)))
        score += context_points
        if context_points:
            reasons.append(f"{candidate.context_length // 1024}K context")
    if task == "extract" and candidate.tool_use:
        score += WEIGHTS["tools"]
        reasons.append("trained for tool use")
    if candidate.is_local:
        score += WEIGHTS["local"]
        reasons.append("local")
    else:
        reasons.append("remote")
    if candidate.loaded:
        score += WEIGHTS["loaded"]
        reasons.append("already loaded")
    quality = candidate.quality
    if quality is not None and quality.runs > 0:
        confidence = min(1.0, quality.runs / WEIGHTS["full_confidence_runs"])
        score += WEIGHTS["success"] * (quality.success_rate - 0.5) * confidence
        record = f"{quality.success_rate:.0%} success over {quality.runs} {task} runs"
        if quality.mean_validation_score is not None:
            score += WEIGHTS["validation"] * (quality.mean_validation_score - 50) * confidence
            record += f", validation {quality.mean_validation_score:.0f}/100"
        reasons.insert(0, record)
    else:
        reasons.append(f"no {task} track record yet")
    reason = f"{candidate.model} on {candidate.provider}: " + ", ".join(reasons)
    return Recommendation(provider=candidate.provider, model=candidate.model, score=round(score, 2), reason=reason)


async def load_candidates(
    session: AsyncSession,
    task_type: str,
    *,
    providers: Sequence[str] | None = None,
    memory_total_bytes: int | None = None,
) -> list[Candidate]:
    """Enabled, present models of enabled providers, with their record in the task's category.

    With `memory_total_bytes` (this machine's GPU or RAM size) local models that could never fit
    are ranked last, with the numbers in their reason.
    """
    task = normalise_task(task_type)
    query = (
        select(AiModel, AiProvider, AiQualityMetric)
        .join(AiProvider, AiModel.provider_id == AiProvider.id)
        .outerjoin(
            AiQualityMetric, (AiQualityMetric.model_id == AiModel.id) & (AiQualityMetric.category == task)
        )
        .where(AiModel.is_enabled.is_(True), AiModel.vanished_at.is_(None), AiProvider.is_enabled.is_(True))
    )
    if providers:
        query = query.where(AiProvider.name.in_(list(providers)))
    candidates = []
    for model, provider, metric in (await session.execute(query)).all():
        facts = model.capabilities or {}
        quality = None
        if metric is not None and metric.runs > 0:
            quality = QualityStats(
                runs=metric.runs,
                success_rate=metric.success_rate,
                mean_validation_score=metric.mean_validation_score,
            )
        parameters = parse_parameter_count(str(facts.get("parameters") or ""))
        estimate = estimate_memory(
            size_bytes=model.size_bytes,
            parameters=parameters,
            quantization=model.quantization,
            context_length=min(model.context_length or 4096, 4096),
        )
        candidates.append(
            Candidate(
                provider=provider.name,
                model=model.model_key,
                is_local=provider.is_local,
                loaded=model.is_loaded,
                model_type="embedding" if facts.get("embedding") else str(facts.get("type") or "llm"),
                vision=bool(facts.get("vision")),
                tool_use=bool(facts.get("tool_use")),
                parameters=parameters,
                context_length=model.context_length,
                size_bytes=model.size_bytes,
                quantization=model.quantization,
                quality=quality,
                needs_bytes=estimate.total_bytes if estimate else None,
                memory_total_bytes=memory_total_bytes,
            )
        )
    return candidates


async def recommend(
    session: AsyncSession,
    task_type: str,
    *,
    providers: Sequence[str] | None = None,
    limit: int = 5,
    memory_total_bytes: int | None = None,
) -> list[Recommendation]:
    """The best `limit` models for a task from the catalogue in the database."""
    candidates = await load_candidates(
        session, task_type, providers=providers, memory_total_bytes=memory_total_bytes
    )
    return rank(task_type, candidates)[:limit]
