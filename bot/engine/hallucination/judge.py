"""`LLMClaimJudge`: a different model, reached through the router, judges claims with structured output.

One request per batch (all pairs, or all claims with their evidence), the schema sent as
structured output like every other structured call (`bot.engine.schemas`). A malformed
answer goes back once with the parser's complaint; a second failure raises
`MalformedOutputError`, which the checker records in its notes and works on without the judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.engine.hallucination.types import ClaimEvidence, PairJudgement, SupportJudgement
from bot.engine.providers.port import ChatMessage, ChatRequest
from bot.engine.providers.router import Router
from bot.engine.schemas import MalformedOutputError, json_schema, parse_output

M = TypeVar("M", bound=BaseModel)
SYSTEM = ("You are a strict fact checker. Judge only what the texts say; do not use outside knowledge unless "
          "asked. Reply with only the JSON object requested.")


class _Lowered(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @field_validator("label", mode="before", check_fields=False)
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower().replace(" ", "_") if isinstance(value, str) else value


class PairVerdict(_Lowered):
    """The judge's view of pair `index`."""

    index: int = Field(ge=0)
    label: Literal["contradiction", "consistent", "unrelated"]
    confidence: float = Field(default=0.5, ge=0, le=1)
    reason: str = Field(default="", max_length=1000)


class ClaimPairVerdicts(BaseModel):
    """One verdict per claim pair."""

    model_config = ConfigDict(extra="ignore")

    verdicts: list[PairVerdict] = Field(max_length=64)


class SupportVerdict(_Lowered):
    """The judge's view of claim `index`."""

    index: int = Field(ge=0)
    label: Literal["supported", "contradicted", "not_enough_info"]
    confidence: float = Field(default=0.5, ge=0, le=1)
    reason: str = Field(default="", max_length=1000)


class ClaimSupportVerdicts(BaseModel):
    """One verdict per claim."""

    model_config = ConfigDict(extra="ignore")

    verdicts: list[SupportVerdict] = Field(max_length=64)


def _pairs_prompt(pairs: Sequence[tuple[str, str]]) -> str:
    lines = [f"[{i}] A: {a[:600]}\n    B: {b[:600]}" for i, (a, b) in enumerate(pairs)]
    return ("Both statements of each pair come from the same answer. For each pair say whether they "
            "contradict each other (cannot both be true), are consistent, or are unrelated.\n\n"
            + "\n".join(lines)
            + '\n\nReply with only {"verdicts": [{"index": 0, "label": "contradiction"|"consistent"|"unrelated", '
              '"confidence": 0.0-1.0, "reason": "..."}]}, one entry per pair.')


def _support_prompt(items: Sequence[ClaimEvidence]) -> str:
    blocks = []
    for i, item in enumerate(items):
        evidence = "\n".join(f"    - {e[:600]}" for e in item.evidence) or "    (none)"
        blocks.append(f"[{i}] CLAIM: {item.claim[:600]}\n  EVIDENCE:\n{evidence}")
    return ("For each claim, judge it only against its evidence: supported, contradicted, or "
            "not_enough_info.\n\n" + "\n".join(blocks)
            + '\n\nReply with only {"verdicts": [{"index": 0, "label": "supported"|"contradicted"|'
              '"not_enough_info", "confidence": 0.0-1.0, "reason": "..."}]}, one entry per claim.')


class LLMClaimJudge:
    """ClaimJudge backed by `model` (a router group) — use a different model than the one that answered."""

    def __init__(self, router: Router, model: str, *, temperature: float = 0.0,
                 timeout_s: float | None = 120.0) -> None:
        self.router = router
        self.model = model
        self.name = model
        self.temperature = temperature
        self.timeout_s = timeout_s

    async def _ask(self, schema: type[M], prompt: str) -> M:
        messages = [ChatMessage("system", SYSTEM), ChatMessage("user", prompt)]
        problem = ""
        for _ in range(2):
            result = await self.router.chat(ChatRequest(model=self.model, messages=messages,
                                                        json_schema=json_schema(schema),
                                                        temperature=self.temperature, timeout_s=self.timeout_s))
            try:
                return parse_output(schema, result.text)
            except MalformedOutputError as err:
                problem = err.detail
                messages = [*messages, ChatMessage("assistant", result.text[:8000]),
                            ChatMessage("user", f"Invalid: {err.detail}. Reply with only the JSON.")]
        raise MalformedOutputError(f"the claim judge {self.model} returned invalid JSON twice", detail=problem)

    async def judge_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[PairJudgement]:
        """One judgement per pair; pairs the model skipped count as unrelated with no confidence."""
        if not pairs:
            return []
        parsed = await self._ask(ClaimPairVerdicts, _pairs_prompt(pairs))
        by_index = {v.index: v for v in parsed.verdicts}
        return [PairJudgement(v.label, v.confidence, v.reason) if (v := by_index.get(i)) is not None
                else PairJudgement("unrelated", 0.0, "the judge gave no verdict") for i in range(len(pairs))]

    async def judge_support(self, items: Sequence[ClaimEvidence]) -> list[SupportJudgement]:
        """One judgement per claim; claims the model skipped count as not_enough_info."""
        if not items:
            return []
        parsed = await self._ask(ClaimSupportVerdicts, _support_prompt(items))
        by_index = {v.index: v for v in parsed.verdicts}
        return [SupportJudgement(v.label, v.confidence, v.reason) if (v := by_index.get(i)) is not None
                else SupportJudgement("not_enough_info", 0.0, "the judge gave no verdict")
                for i in range(len(items))]
