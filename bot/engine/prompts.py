"""Prompts come from the data: specialised AIs' system prompts, instructions and task templates.

The seed fills these tables with defaults (bot/db/seed.py); a user tunes behaviour by editing
rows, never code. What is built here is only the framing that carries the data to the model.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import AiRole, AiTemplate, Instruction, InstructionScope, SpecializedAi
from bot.errors import OrchestratorError

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
