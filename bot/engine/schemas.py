"""The structured outputs the engine asks models for: plans, verdicts and tie-break judgements.

Each is a pydantic model whose JSON Schema is sent to the server as structured output
(`response_format` on LM Studio/llama.cpp/OpenAI, `format` on Ollama) so small local models
return valid JSON; the parsers still check everything, because not every server enforces it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.errors import OrchestratorError

CATEGORIES = ("code", "reasoning", "research", "writing", "summarise", "translate", "extract", "chat", "analysis")
MAX_SUBTASKS = 12
M = TypeVar("M", bound=BaseModel)


class MalformedOutputError(OrchestratorError):
    """A model's structured output is not valid JSON for the schema; `detail` goes back to it."""

    def __init__(self, message: str, *, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class PlannedSubtask(BaseModel):
    """One step of a plan."""

    model_config = ConfigDict(extra="ignore")

    id: int = Field(ge=1, le=MAX_SUBTASKS)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=8000)
    category: str = Field(default="reasoning", max_length=32)
    depends_on: list[int] = Field(default_factory=list, max_length=MAX_SUBTASKS)
    priority: int = Field(default=0, ge=-10, le=10)
    expected_output: str = Field(default="", max_length=2000)

    @field_validator("category", mode="before")
    @classmethod
    def _known_category(cls, value: Any) -> str:
        text = str(value or "reasoning").strip().lower()
        return text if text in CATEGORIES else "reasoning"


class Plan(BaseModel):
    """A task split into subtasks that form a DAG through `depends_on`."""

    model_config = ConfigDict(extra="ignore")

    subtasks: list[PlannedSubtask] = Field(min_length=1, max_length=MAX_SUBTASKS)

    def check_graph(self) -> None:
        """Ids unique, dependencies known, no cycles; raises ValueError saying which."""
        ids = [s.id for s in self.subtasks]
        if len(set(ids)) != len(ids):
            raise ValueError(f"subtask ids must be unique, got {ids}")
        known = set(ids)
        for subtask in self.subtasks:
            unknown = set(subtask.depends_on) - known
            if unknown:
                raise ValueError(f"subtask {subtask.id} depends on unknown ids {sorted(unknown)}")
            if subtask.id in subtask.depends_on:
                raise ValueError(f"subtask {subtask.id} depends on itself")
        self.topological_order()

    def topological_order(self) -> list[PlannedSubtask]:
        """Subtasks ordered so dependencies come first; ValueError on a cycle."""
        by_id = {s.id: s for s in self.subtasks}
        order: list[PlannedSubtask] = []
        state: dict[int, int] = {}

        def visit(node: int, path: tuple[int, ...]) -> None:
            if state.get(node) == 2:
                return
            if state.get(node) == 1:
                raise ValueError(f"dependency cycle: {' -> '.join(map(str, (*path, node)))}")
            state[node] = 1
            for dep in by_id[node].depends_on:
                visit(dep, (*path, node))
            state[node] = 2
            order.append(by_id[node])

        for subtask in self.subtasks:
            visit(subtask.id, ())
        return order


class Verdict(BaseModel):
    """A validator's critical review of one result."""

    model_config = ConfigDict(extra="ignore")

    score: float = Field(ge=0, le=100)
    decision: Literal["approve", "revise", "reject"]
    issues: list[str] = Field(default_factory=list, max_length=50)
    summary: str = Field(default="", max_length=4000)

    @field_validator("decision", mode="before")
    @classmethod
    def _normalise_decision(cls, value: Any) -> Any:
        return str(value).strip().lower() if isinstance(value, str) else value

    @field_validator("issues", mode="before")
    @classmethod
    def _issues_as_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [item if isinstance(item, str) else json.dumps(item) for item in value][:50]
        return value


class Judgement(BaseModel):
    """A tie-breaker's choice between two answers shown as A and B."""

    model_config = ConfigDict(extra="ignore")

    winner: Literal["A", "B", "tie"]
    reason: str = Field(default="", max_length=4000)

    @field_validator("winner", mode="before")
    @classmethod
    def _normalise_winner(cls, value: Any) -> Any:
        text = str(value).strip()
        return "tie" if text.lower() == "tie" else text.upper()


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The schema sent to servers as structured output."""
    return model.model_json_schema()


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: bare, fenced in ```json, or the outermost {...}."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    last_error: Exception | None = None
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError as err:
            last_error = err
    raise MalformedOutputError("the answer contains no JSON object", detail=f"no valid JSON found ({last_error})")


def parse_output(model: type[M], text: str) -> M:
    """Parse and validate a model's structured answer; MalformedOutputError says what is wrong."""
    if len(text) > 200_000:
        raise MalformedOutputError("the answer is too long to be a plan or verdict", detail="answer over 200 kB")
    value = extract_json(text)
    try:
        parsed = model.model_validate(value)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'root'}: {e['msg']}" for e in err.errors()[:10]
        )
        raise MalformedOutputError(f"the answer does not match the {model.__name__} schema",
                                   detail=problems) from err
    if isinstance(parsed, Plan):
        try:
            parsed.check_graph()
        except ValueError as err:
            raise MalformedOutputError("the plan's dependencies are not a DAG", detail=str(err)) from err
    return parsed
