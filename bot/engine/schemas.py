"""The structured outputs the engine asks models for: plans, verdicts and tie-break judgements.

Each is a pydantic model whose JSON Schema is sent to the server as structured output
(`response_format` on LM Studio/llama.cpp/OpenAI, `format` on Ollama) so small local models
return valid JSON; the parsers still check everything, because not every server enforces it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.errors import OrchestratorError

CATEGORIES = (
    "code", "analysis", "research", "writing", "translation", "data", "planning", "general",
    "reasoning", "summarise", "extract", "chat",
)
CATEGORY_ALIASES = {"translate": "translation", "summary": "summarise", "summarize": "summarise"}
MAX_SUBTASKS = 12
M = TypeVar("M", bound=BaseModel)


class MalformedOutputError(OrchestratorError):
    """A model's structured output is not valid JSON for the schema; `detail` goes back to it."""

    def __init__(self, message: str, *, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class PlannedSubtask(BaseModel):
    """One step of a plan (`seq` in the seeded planner prompt; `id` is accepted too)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: int = Field(ge=1, le=MAX_SUBTASKS, validation_alias=AliasChoices("seq", "id"))
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=8000)
    category: str = Field(default="reasoning", max_length=32)
    depends_on: list[int] = Field(default_factory=list, max_length=MAX_SUBTASKS)
    priority: int = Field(default=0, ge=-10, le=10)
    expected_output: str = Field(default="", max_length=2000)

    @field_validator("category", mode="before")
    @classmethod
    def _known_category(cls, value: Any) -> str:
        text = str(value or "general").strip().lower()
        text = CATEGORY_ALIASES.get(text, text)
        return text if text in CATEGORIES else "general"


class Plan(BaseModel):
    """A task split into subtasks that form a DAG through `depends_on`.

    An empty plan with `questions` is the planner saying the task cannot be planned as asked.
    """

    model_config = ConfigDict(extra="ignore")

    goal: str = Field(default="", max_length=2000)
    subtasks: list[PlannedSubtask] = Field(default_factory=list, max_length=MAX_SUBTASKS)
    questions: list[str] = Field(default_factory=list, max_length=20)
    assumptions: list[str] = Field(default_factory=list, max_length=50)

    @field_validator("questions", "assumptions", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return [str(item) for item in value] if isinstance(value, list) else value

    def check_graph(self) -> None:
        """Some work (or questions), ids unique, dependencies known, no cycles; ValueError says which."""
        if not self.subtasks and not self.questions:
            raise ValueError("the plan has no subtasks and no questions")
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
    """A validator's critical review of one result (`verdict` in the seeded prompt, or `decision`)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    score: float = Field(ge=0, le=100)
    decision: Literal["approve", "revise", "reject"] = Field(validation_alias=AliasChoices("verdict", "decision"))
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
            return [_issue_text(item) for item in value][:50]
        return value


def _issue_text(item: Any) -> str:
    """`{"severity", "location", "problem", "fix"}` (the seeded reviewer's shape) as one line."""
    if not isinstance(item, dict):
        return str(item)
    problem = str(item.get("problem") or item.get("issue") or json.dumps(item))
    parts = [f"[{item['severity']}] " if item.get("severity") else "", problem]
    if item.get("location"):
        parts.append(f" ({item['location']})")
    if item.get("fix"):
        parts.append(f" — fix: {item['fix']}")
    return "".join(parts)


class Judgement(BaseModel):
    """A tie-breaker's choice: the RESULT shown first, the ALTERNATIVE shown second, or neither."""

    model_config = ConfigDict(extra="ignore")

    winner: Literal["result", "alternative", "review", "neither"]
    score: float | None = Field(default=None, ge=0, le=100)
    reasons: list[str] = Field(default_factory=list, max_length=50)
    merged_result: str | None = Field(default=None, max_length=200_000)

    @field_validator("winner", mode="before")
    @classmethod
    def _normalise_winner(cls, value: Any) -> Any:
        return str(value).strip().lower() if isinstance(value, str) else value

    @field_validator("reasons", mode="before")
    @classmethod
    def _reasons_as_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return [str(item) for item in value] if isinstance(value, list) else value


_LENGTH_KEYWORDS = {"maxLength", "minLength", "maxItems", "minItems"}


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The schema sent to servers as structured output, without length limits.

    Grammar-based servers (llama.cpp) unroll every length bound into grammar rules and refuse
    large ones; the parser still enforces every limit when the answer comes back.
    """

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: strip(value) for key, value in node.items() if key not in _LENGTH_KEYWORDS}
        if isinstance(node, list):
            return [strip(item) for item in node]
        return node

    stripped: dict[str, Any] = strip(model.model_json_schema())
    return stripped


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
