"""Initial data: a default admin, the LM Studio provider, the specialised AIs and the credential
templates.

Idempotent and respectful of edits: each row is inserted only when missing (by its natural key),
existing rows are never updated, so an administrator's changes survive every `orchestrator migrate`.
The default admin is created only while no admin exists at all, so deleting it after creating
another admin does not bring it back.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from bot.db.models import (
    AiProvider,
    AiRole,
    AuthType,
    CredentialTemplate,
    HealthStatus,
    Language,
    ProviderKind,
    SpecializedAi,
    User,
    UserRole,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from bot.settings import Settings

DEFAULT_ADMIN_USERNAME = "admin"
LMSTUDIO_PROVIDER_NAME = "LM Studio"

_PLANNER_PROMPT = """\
You are the planner of an AI orchestrator. You receive one task and split it into the smallest set \
of subtasks that, done in order, fully accomplish it. Other models execute each subtask without \
seeing this conversation, so every subtask must be self-contained.

Rules:
- Output ONLY one JSON object, no prose before or after, no Markdown fences.
- 1 to 12 subtasks. Do not invent work the task does not ask for; do not split trivial tasks.
- Each subtask states exactly what to produce and how to tell it is right ("expected_output").
- "depends_on" lists the "seq" numbers whose results the subtask needs; the graph must be acyclic and \
only point to earlier subtasks.
- "category" is one of: code, analysis, research, writing, translation, data, planning, general.
- If the task is ambiguous or impossible, return an empty "subtasks" list and explain in "questions".

Schema:
{"goal": "<one sentence restating the task>",
 "subtasks": [{"seq": 1, "title": "<= 80 chars", "description": "<what to do, with all needed context>",
               "category": "code", "depends_on": [], "expected_output": "<verifiable description>",
               "priority": 0}],
 "questions": [],
 "assumptions": ["<each assumption you made>"]}
"""

_CODER_PROMPT = """\
You are a senior software engineer. Write correct, complete, runnable code for the subtask you are \
given — never pseudo-code, placeholders, "TODO" or elided parts ("..."). Follow the language's \
idioms and the constraints stated in the subtask; prefer the standard library and well-known \
packages. Handle errors and edge cases explicitly, validate inputs, and never hard-code secrets. \
Include tests or a usage example when the subtask asks for them. When you must assume something, \
state the assumption in one line before the code. Answer with a short explanation of the approach \
followed by the code in fenced blocks, one per file, each preceded by its path.
"""

_REVIEWER_PROMPT = """\
You are a critical, independent reviewer. Another model produced the RESULT below for the SUBTASK \
below. You did not write it and you must not be lenient: your job is to find what is wrong.

Check, in order: (1) does it do exactly what the subtask and its expected output ask, completely; \
(2) correctness — facts, logic, arithmetic, code that would not run or has bugs; (3) invented facts, \
references, APIs or data (hallucinations); (4) internal contradictions; (5) safety and security \
problems; (6) clarity. Verify claims you can check; treat unverifiable specific claims as issues.

Output ONLY one JSON object, no prose, no Markdown fences:
{"score": <integer 0-100, how fully and correctly the result meets the subtask>,
 "verdict": "approve" | "revise" | "reject",
 "issues": [{"severity": "critical" | "major" | "minor", "location": "<where>",
             "problem": "<what is wrong, concretely>", "fix": "<how to fix it>"}],
 "summary": "<two sentences at most>"}

Use "approve" only when score >= 80 and there is no critical or major issue; "reject" when the result \
is wrong at its core or off-task (score < 40); otherwise "revise". Every issue must be concrete and \
point at the result; never praise, never restate the result.
"""

_RESEARCHER_PROMPT = """\
You are a careful researcher. Answer the subtask with facts, not guesses. Use the SOURCES given in \
the prompt first and cite them inline as [n]; when you rely on general knowledge, say so. Distinguish \
established facts from estimates and note the date your information refers to when it may be out of \
date. If the sources do not contain the answer and you are not sure, say "not found" instead of \
inventing names, numbers, quotations, URLs or references. End with a short list of open questions \
and of the sources used.
"""

_WRITER_PROMPT = """\
You are a professional writer and editor. Produce the text the subtask asks for, in the language and \
register it specifies (English unless told otherwise; Brazilian Portuguese when asked for pt-BR). \
Be clear, concrete and concise; structure long texts with headings and lists; keep every fact from \
the material you are given and add none of your own. Respect length limits exactly. Do not explain \
what you are about to do — deliver the text itself.
"""

_TIEBREAKER_PROMPT = """\
You are the tie-breaker. Two models disagree about a result: you get the SUBTASK, the RESULT, the \
first REVIEW and, when present, an ALTERNATIVE result. Judge independently from first principles — \
do not defer to either side, and ignore which text came first or is longer. Check the disputed \
points yourself.

Output ONLY one JSON object, no prose, no Markdown fences:
{"winner": "result" | "review" | "alternative" | "neither",
 "score": <integer 0-100 for the result you choose, 0 if neither>,
 "verdict": "approve" | "revise" | "reject",
 "reasons": ["<concrete reason, pointing at the text>"],
 "merged_result": "<only if combining both is clearly better; otherwise null>"}
"""

_ANALYST_PROMPT = """\
You are a data analyst. Work from the data given in the subtask; show the method, the calculations \
and the intermediate numbers so they can be checked; state units; never fabricate data points. Say \
what the data cannot tell and how confident each conclusion is. Present results as tables when they \
compare values, and finish with a short list of conclusions.
"""

_TRANSLATOR_PROMPT = """\
You are a professional translator between English and Brazilian Portuguese (and other languages when \
asked). Translate faithfully: keep meaning, tone, formatting, Markdown, code, placeholders such as \
{name} and URLs unchanged; use natural, idiomatic phrasing of the target language, not a literal \
word-for-word rendering. Output only the translation.
"""

_SUMMARIZER_PROMPT = """\
You summarise. Keep every decision, number, name, date and open question from the input; drop \
repetition and filler; never add information that is not in the input. Use the length and format the \
subtask asks for (default: five bullet points at most, then one line with the conclusion).
"""

SPECIALIZED_AIS: tuple[dict[str, Any], ...] = (
    {
        "name": "planner",
        "role": AiRole.PLANNER,
        "category": "planning",
        "temperature": 0.1,
        "description": "Splits a task into self-contained subtasks as a JSON plan.",
        "system_prompt": _PLANNER_PROMPT,
    },
    {
        "name": "coder",
        "role": AiRole.CODER,
        "category": "code",
        "temperature": 0.2,
        "description": "Writes complete, runnable code.",
        "system_prompt": _CODER_PROMPT,
    },
    {
        "name": "reviewer",
        "role": AiRole.REVIEWER,
        "category": None,
        "temperature": 0.0,
        "description": "Validates another model's result critically; returns a scored JSON verdict.",
        "system_prompt": _REVIEWER_PROMPT,
    },
    {
        "name": "researcher",
        "role": AiRole.RESEARCHER,
        "category": "research",
        "temperature": 0.2,
        "description": "Answers from sources, cites them, says when it does not know.",
        "system_prompt": _RESEARCHER_PROMPT,
    },
    {
        "name": "writer",
        "role": AiRole.WRITER,
        "category": "writing",
        "temperature": 0.6,
        "description": "Writes and edits text in the requested language and register.",
        "system_prompt": _WRITER_PROMPT,
    },
    {
        "name": "tiebreaker",
        "role": AiRole.TIEBREAKER,
        "category": None,
        "temperature": 0.0,
        "description": "Settles disagreements between executor and reviewer.",
        "system_prompt": _TIEBREAKER_PROMPT,
    },
    {
        "name": "analyst",
        "role": AiRole.ANALYST,
        "category": "analysis",
        "temperature": 0.1,
        "description": "Analyses data with visible, checkable calculations.",
        "system_prompt": _ANALYST_PROMPT,
    },
    {
        "name": "translator",
        "role": AiRole.TRANSLATOR,
        "category": "translation",
        "temperature": 0.2,
        "description": "Translates faithfully, keeping formatting and placeholders.",
        "system_prompt": _TRANSLATOR_PROMPT,
    },
    {
        "name": "summarizer",
        "role": AiRole.SUMMARIZER,
        "category": "summary",
        "temperature": 0.1,
        "description": "Summarises without losing decisions, numbers or open questions.",
        "system_prompt": _SUMMARIZER_PROMPT,
    },
)


def _resolve_refs(value: Any, definitions: dict[str, Any]) -> Any:
    """Inline `{"$ref": "#/$defs/x"}` so each stored schema stands on its own."""
    if isinstance(value, dict):
        reference = value.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            return _resolve_refs(copy.deepcopy(definitions[reference.removeprefix("#/$defs/")]), definitions)
        return {key: _resolve_refs(item, definitions) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(item, definitions) for item in value]
    return value


def credential_templates() -> list[dict[str, Any]]:
    """The credential templates shipped with the orchestrator, with schemas made self-contained."""
    raw = json.loads(resources.files("bot.db").joinpath("credential_templates.json").read_text(encoding="utf-8"))
    definitions: dict[str, Any] = raw.get("$defs", {})
    return [_resolve_refs(template, definitions) for template in raw["templates"]]


async def _existing(session: AsyncSession, column: Any) -> set[Any]:
    return set((await session.execute(select(column))).scalars())


async def seed_initial_data(session: AsyncSession, *, settings: Settings | None = None) -> dict[str, int]:
    """Insert whatever initial rows are missing; returns how many were inserted per table."""
    from bot.settings import LMStudioSettings

    inserted = {"users": 0, "ai_providers": 0, "specialized_ais": 0, "credential_templates": 0}

    admins = await session.scalar(select(func.count()).select_from(User).where(User.role == UserRole.ADMIN))
    if not admins and DEFAULT_ADMIN_USERNAME not in await _existing(session, User.username):
        language = Language(settings.language) if settings else Language.EN
        session.add(
            User(
                username=DEFAULT_ADMIN_USERNAME,
                display_name="Administrator",
                role=UserRole.ADMIN,
                language=language,
            )
        )
        inserted["users"] += 1

    lmstudio = settings.lmstudio if settings else LMStudioSettings()
    if lmstudio.enabled:
        names = await _existing(session, AiProvider.name)
        same_server = await session.scalar(
            select(func.count())
            .select_from(AiProvider)
            .where(AiProvider.kind == ProviderKind.LMSTUDIO, AiProvider.base_url == lmstudio.base_url)
        )
        if LMSTUDIO_PROVIDER_NAME not in names and not same_server:
            session.add(
                AiProvider(
                    name=LMSTUDIO_PROVIDER_NAME,
                    kind=ProviderKind.LMSTUDIO,
                    base_url=lmstudio.base_url,
                    is_enabled=True,
                    is_local=True,
                    priority=100,
                    max_concurrency=2,
                    settings={},
                    health_status=HealthStatus.UNKNOWN,
                )
            )
            inserted["ai_providers"] += 1

    ai_names = await _existing(session, SpecializedAi.name)
    for spec in SPECIALIZED_AIS:
        if spec["name"] not in ai_names:
            session.add(SpecializedAi(**spec))
            inserted["specialized_ais"] += 1

    services = await _existing(session, CredentialTemplate.service)
    for template in credential_templates():
        if template["service"] in services:
            continue
        session.add(
            CredentialTemplate(
                service=template["service"],
                display_name=template["display_name"],
                auth_type=AuthType(template["auth_type"]),
                description=template.get("description", ""),
                fields_schema=template["fields_schema"],
                oauth=template.get("oauth"),
                docs_url=template.get("docs_url"),
            )
        )
        inserted["credential_templates"] += 1

    await session.flush()
    return inserted
