"""Prompts come from the data: specialised AIs' system prompts, instructions and task templates.

The seed fills these tables with defaults (bot/db/seed.py); a user tunes behaviour by editing
rows, never code. What is built here is only the framing that carries the data to the model.
"""

from __future__ import annotations

import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Table, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.engine import Reads
from bot.db.models import AiRole, AiTemplate, Instruction, InstructionScope, SpecializedAi, Task, TaskStatus
from bot.errors import OrchestratorError

AIS = cast(Table, SpecializedAi.__table__)
INSTRUCTIONS = cast(Table, Instruction.__table__)
_TASKS = cast(Table, Task.__table__)
_ENDED_TASK = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)

# Which specialised AI executes a subtask of each category.
CATEGORY_ROLES: dict[str, AiRole] = {
    "code": AiRole.CODER,
    "research": AiRole.RESEARCHER,
    "writing": AiRole.WRITER,
    "chat": AiRole.WRITER,
    "summarise": AiRole.SUMMARIZER,
    "translation": AiRole.TRANSLATOR,
    "analysis": AiRole.ANALYST,
    "data": AiRole.ANALYST,
    "reasoning": AiRole.ANALYST,
    "extract": AiRole.ANALYST,
    "planning": AiRole.ANALYST,
    "general": AiRole.ANALYST,
}


class PromptError(OrchestratorError):
    """A prompt cannot be built from the data (missing role, bad template)."""


@dataclass(frozen=True, slots=True)
class RolePrompt:
    """A specialised AI as the engine uses it."""

    ai_id: int | None
    role: str
    system_prompt: str
    temperature: float
    max_tokens: int | None
    preferred_model_id: int | None


async def role_prompt(session: AsyncSession, role: AiRole) -> RolePrompt:
    """The active specialised AI for a role (lowest id when several)."""
    row = await session.scalar(
        select(SpecializedAi)
        .where(SpecializedAi.role == role, SpecializedAi.is_active.is_(True))
        .order_by(SpecializedAi.id)
        .limit(1)
    )
    if row is None:
        raise PromptError(
            f"no active specialised AI has the role {role.value!r}",
            hint="run `orchestrator migrate` to restore the defaults, or activate one in /ais",
        )
    return RolePrompt(row.id, row.role.value, row.system_prompt, row.temperature, row.max_tokens,
                      row.preferred_model_id)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Every specialised AI and the active instructions that can apply to open work, as read at one moment."""

    loaded_at: float
    ais: Mapping[int, tuple[RolePrompt, bool]]  # id → (prompt, is_active)
    by_role: Mapping[str, RolePrompt]  # the active AI with the lowest id per role
    # (scope, category, task_id, text) in priority order
    instructions: tuple[tuple[str, str | None, int | None, str], ...]


@dataclass(slots=True)
class PromptCache:
    """Specialised AIs and standing instructions for the engine's hot path, re-read at most every `ttl_s`.

    Every subtask needs its executor's, reviewer's and maybe the tie-breaker's prompt plus the
    instructions that apply; reading them per use was a third of a subtask's database reads. The
    rows are user-editable, so an edit (a new prompt, an instruction switched on or off, a task's
    own instruction) reaches work that starts up to `ttl_s` later — bounded staleness, documented
    in docs/engine.md. Task-scoped instructions are loaded for tasks that have not ended.
    """

    ttl_s: float = 1.0
    _snapshot: _Snapshot | None = field(default=None)

    def invalidate(self) -> None:
        """Forget what was read (the next use reads again)."""
        self._snapshot = None

    async def _current(self, connection: Reads) -> _Snapshot:
        snapshot = self._snapshot
        now = time.monotonic()
        if snapshot is not None and now - snapshot.loaded_at < self.ttl_s:
            return snapshot
        ais: dict[int, tuple[RolePrompt, bool]] = {}
        by_role: dict[str, RolePrompt] = {}
        rows = await connection.execute(
            select(AIS.c.id, AIS.c.role, AIS.c.system_prompt, AIS.c.temperature, AIS.c.max_tokens,
                   AIS.c.preferred_model_id, AIS.c.is_active).order_by(AIS.c.id))
        for row in rows:
            role = AiRole(row.role)
            prompt = RolePrompt(int(row.id), role.value, row.system_prompt, float(row.temperature), row.max_tokens,
                                row.preferred_model_id)
            ais[prompt.ai_id or 0] = (prompt, bool(row.is_active))
            if row.is_active:
                by_role.setdefault(role.value, prompt)
        open_task = INSTRUCTIONS.c.task_id.in_(select(_TASKS.c.id).where(_TASKS.c.status.not_in(_ENDED_TASK)))
        found = await connection.execute(
            select(INSTRUCTIONS.c.scope, INSTRUCTIONS.c.category, INSTRUCTIONS.c.task_id, INSTRUCTIONS.c.text)
            .where(INSTRUCTIONS.c.is_active.is_(True),
                   or_(INSTRUCTIONS.c.scope != InstructionScope.TASK, open_task))
            .order_by(INSTRUCTIONS.c.priority.desc(), INSTRUCTIONS.c.id))
        instructions = tuple((InstructionScope(r.scope).value, r.category, r.task_id, r.text) for r in found)
        snapshot = _Snapshot(loaded_at=now, ais=ais, by_role=by_role, instructions=instructions)
        self._snapshot = snapshot
        return snapshot

    async def role(self, connection: Reads, role: AiRole) -> RolePrompt:
        """The active specialised AI for a role (lowest id when several), like `role_prompt`."""
        prompt = (await self._current(connection)).by_role.get(role.value)
        if prompt is None:
            raise PromptError(
                f"no active specialised AI has the role {role.value!r}",
                hint="run `orchestrator migrate` to restore the defaults, or activate one in /ais",
            )
        return prompt

    async def ai(self, connection: Reads, ai_id: int) -> RolePrompt | None:
        """One specialised AI by id, or None when it was deleted or switched off."""
        found = (await self._current(connection)).ais.get(ai_id)
        return found[0] if found is not None and found[1] else None

    async def instructions(self, connection: Reads, *, category: str | None,
                           task_id: int | None) -> list[str]:
        """Standing instructions that apply, like `instructions_for`."""
        applying = []
        for scope, scope_category, scope_task, text in (await self._current(connection)).instructions:
            if (scope == InstructionScope.GLOBAL.value
                    or (scope == InstructionScope.CATEGORY.value and category and scope_category == category)
                    or (scope == InstructionScope.TASK.value and task_id is not None and scope_task == task_id)):
                applying.append(text)
        return applying


def role_for_category(category: str | None) -> AiRole:
    """The executing role for a subtask category."""
    return CATEGORY_ROLES.get(category or "", AiRole.ANALYST)


async def instructions_for(session: AsyncSession, *, category: str | None, task_id: int | None) -> list[str]:
    """Standing instructions that apply: global, the category's, and the task's own."""
    clauses = [Instruction.scope == InstructionScope.GLOBAL]
    if category:
        clauses.append((Instruction.scope == InstructionScope.CATEGORY) & (Instruction.category == category))
    if task_id is not None:
        clauses.append((Instruction.scope == InstructionScope.TASK) & (Instruction.task_id == task_id))
    rows = await session.scalars(
        select(Instruction).where(Instruction.is_active.is_(True), or_(*clauses))
        .order_by(Instruction.priority.desc(), Instruction.id)
    )
    return [row.text for row in rows]


def system_with_instructions(system_prompt: str, instructions: Sequence[str]) -> str:
    """The system prompt followed by the standing instructions, if any."""
    if not instructions:
        return system_prompt
    listed = "\n".join(f"- {text}" for text in instructions)
    return f"{system_prompt}\n\nStanding instructions:\n{listed}"


async def render_template(session: AsyncSession, *, name: str, variables: Mapping[str, str]) -> tuple[str, str | None]:
    """A task description from a template: (text, category). Missing variables are an error."""
    template = await session.scalar(select(AiTemplate).where(AiTemplate.name == name, AiTemplate.is_active.is_(True)))
    if template is None:
        raise PromptError(f"no active template named {name!r}", hint="see /templates for the names")
    fields = {f for _, f, _, _ in string.Formatter().parse(template.body) if f}
    missing = sorted(fields - set(variables))
    if missing:
        raise PromptError(f"template {name!r} needs values for: {', '.join(missing)}")
    try:
        return template.body.format_map(dict(variables)), template.category
    except (ValueError, KeyError, IndexError) as err:
        raise PromptError(f"template {name!r} cannot be rendered: {err}") from err
