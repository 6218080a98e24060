"""The command layer on real databases (SQLite and MariaDB), typed into the console platform."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import structlog
from sqlalchemy import select, update

from bot.commands import CommandContext, PermissionPolicy, UsageError, build_registry
from bot.commands.registry import CommandRegistry, Param, tokenize
from bot.db.models import (
    AiModel,
    AiProvider,
    AiQualityMetric,
    Alert,
    AlertStatus,
    ExecutionLog,
    ExternalApiAccount,
    Instruction,
    KnowledgeEntry,
    LogLevel,
    Severity,
    UserRole,
)
from bot.logs import configure_logging
from bot.platforms.console import ConsolePlatform
from bot.platforms.i18n import CATALOGUE, LANGUAGES, help_text, placeholders
from bot.settings import Settings
from tests.fakes.chat_db import ChatCore, chat_core, fresh_sqlite_copy, migrated_sqlite_template
from tests.fakes.lmstudio import DownloadScript, FakeLMStudio


@pytest.fixture
async def core(migrated_db: str) -> AsyncIterator[ChatCore]:
    async with chat_core(migrated_db) as built:
        yield built


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite_template(str(tmp_path_factory.mktemp("chat-template")))


@pytest.fixture
async def sqlite_core(sqlite_template: str, tmp_path: Path) -> AsyncIterator[ChatCore]:
    """For behaviour that does not touch SQL differences (the dispatcher's error boundary)."""
    async with chat_core(fresh_sqlite_copy(sqlite_template, str(tmp_path))) as built:
        yield built


def console_for(core: ChatCore, tmp_path: Path, user: str) -> ConsolePlatform:
    return ConsolePlatform(sink=core.dispatcher.handle_event, user_id=user, files_dir=tmp_path / "files")


# -- parsing (no database) ---------------------------------------------------------------------
def test_tokenizer_keeps_quoted_words_and_positions() -> None:
    tokens = tokenize("add \"two words\" 'single q' plain")
    assert [t.value for t in tokens] == ["add", "two words", "single q", "plain"]
    with pytest.raises(UsageError) as caught:
        tokenize('add "unclosed')
    assert caught.value.key == "usage.unbalanced_quotes"


def test_parse_validates_and_gives_usage() -> None:
    registry = build_registry()
    assert registry.parse("logs", "--level=error --task 7").args == {"task": 7, "level": "error", "limit": 10}
    assert registry.parse("kb", "search hello world --limit 2").args == {"query": "hello world", "limit": 2}
    assert registry.parse("alerts", "").spec.name == "alerts list"  # default subcommand
    cases = {
        ("logs", "--limit 0"): "usage.too_small",
        ("logs", "--limit 999"): "usage.too_large",
        ("logs", "--limit ten"): "usage.not_a_number",
        ("logs", "--level loud"): "usage.bad_choice",
        ("logs", "--bogus 1"): "usage.unknown_option",
        ("logs", "--limit"): "usage.option_needs_value",
        ("alerts", "ack"): "usage.missing",
        ("alerts", "ack 1 2"): "usage.too_many",
        ("kb", ""): "usage.pick_subcommand",
        ("kb", "frobnicate"): "usage.pick_subcommand",
        ("nope", ""): "usage.unknown_command",
        ("kb", "add title " + "x" * 30_000): "usage.too_long",
        ("templates", "y" * 500): "usage.value_too_long",
    }
    for (name, text), key in cases.items():
        with pytest.raises(UsageError) as caught:
            registry.parse(name, text)
        assert caught.value.key == key, (name, text)
    with pytest.raises(UsageError) as caught:
        registry.parse("logs", "--limit x")
    assert caught.value.usage is not None and caught.value.usage.startswith("/logs")


def test_usage_errors_never_repeat_a_pasted_token() -> None:
    registry = build_registry()
    token = "xoxb-1234567890-abcdefghijkl"
    for name, text in (("logs", f"--{token} 1"), ("logs", f"--limit {token}"), ("alerts", f"ack 1 {token}")):
        with pytest.raises(UsageError) as caught:
            registry.parse(name, text)
        assert token not in str(caught.value.params) and "1234567890" not in str(caught.value.params)
    with pytest.raises(UsageError) as caught:
        registry.parse("logs", "--bogus 1")
    assert caught.value.params["option"] == "--bogus"  # short plain words are still shown


def test_registry_refuses_bad_registrations() -> None:
    registry = CommandRegistry()

    async def documented(ctx: CommandContext) -> str:
        """Do a thing."""
        return ""

    async def undocumented(ctx: CommandContext) -> str:
        return ""

    registry.add("thing", documented, role=UserRole.VIEWER)
    with pytest.raises(ValueError, match="twice"):
        registry.add("thing", documented, role=UserRole.VIEWER)
    with pytest.raises(ValueError, match="docstring"):
        registry.add("other", undocumented, role=UserRole.VIEWER)
    with pytest.raises(ValueError, match="last positional"):
        registry.add("bad", documented, role=UserRole.VIEWER, params=[Param("a", kind="text"), Param("b")])


def test_catalogue_is_complete_in_both_languages() -> None:
    for key, entry in CATALOGUE.items():
        if key.startswith("help."):
            assert "pt-BR" in entry, key
            continue
        assert set(entry) == set(LANGUAGES), key
        assert placeholders(entry["en"]) == placeholders(entry["pt-BR"]), key
    registry = build_registry()
    for spec in registry.specs():
        assert f"help.{spec.name}" in CATALOGUE, f"no pt-BR help for /{spec.name}"
        assert help_text(spec, "pt-BR") != spec.summary
    # Every help.* entry belongs to a real command: no help text for something that does not exist.
    names = {spec.name for spec in registry.specs()} | {"help", "status"}
    assert {
        key[5:]
        for key in CATALOGUE
        if key.startswith("help.")
        and "." not in key[5:]
        and key[5:] not in ("header", "footer", "no_such_command", "required_role")
    } <= names


# -- through the console, on both databases ------------------------------------------------------
async def test_permissions_usage_and_audit(core: ChatCore, tmp_path: Path) -> None:
    alice, vera, stranger = (console_for(core, tmp_path, name) for name in ("alice", "vera", "mallory"))
    assert "Missing text" in (await alice.submit("/instructions add"))[0]
    assert "Usage: /instructions add <text…>" in (await alice.submit("/instructions add"))[0]
    assert "don't know you" in (await stranger.submit("/status"))[0]
    assert "don't know you" in (await stranger.submit("hello?"))[0]
    denied = (await vera.submit("/instructions add be brief"))[0]
    assert denied == "/instructions add exige o papel operator; você não o tem."
    assert "Nenhuma instrução permanente" in (await vera.submit("/instructions"))[0]
    assert "Não existe o comando /nope" in (await vera.submit("/nope"))[0]
    rows = await core.audit_rows()
    summary = [(r.action, str(r.outcome), r.actor_user_id) for r in rows]
    assert summary == [
        ("command.instructions", "failed", core.user_ids["alice"]),
        ("command.instructions", "failed", core.user_ids["alice"]),
        ("command.status", "denied", None),
        ("command.instructions.add", "denied", core.user_ids["vera"]),
        ("command.instructions.list", "success", core.user_ids["vera"]),
        ("command.nope", "failed", core.user_ids["vera"]),
    ]
    assert all(r.platform == "console" for r in rows)
    assert rows[3].detail["args"]["text"] == "be brief"


async def test_open_policy_lets_strangers_read_only(sqlite_template: str, tmp_path: Path) -> None:
    url = fresh_sqlite_copy(sqlite_template, str(tmp_path))
    async with chat_core(url, policy=PermissionPolicy(unknown_user_role=UserRole.VIEWER)) as core:
        stranger = console_for(core, tmp_path, "mallory")
        assert (
            "Standing instructions" in (await stranger.submit("/instructions list"))[0]
            or "No standing instructions" in (await stranger.submit("/instructions list"))[0]
        )
        assert "needs the operator role" in (await stranger.submit("/instructions add x"))[0]


async def test_unexpected_error_gets_a_reference_and_a_logged_traceback(sqlite_core: ChatCore, tmp_path: Path) -> None:
    core = sqlite_core

    async def crash(ctx: CommandContext) -> str:
        """Divide by zero (a bug on purpose)."""
        return str(1 // len(ctx.args))

    core.dispatcher.registry.add("crash", crash, role=UserRole.VIEWER)
    alice = console_for(core, tmp_path, "alice")
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    try:
        (reply,) = await alice.submit("/crash")
    finally:
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
    assert reply.startswith("Something went wrong on my side. Reference: ")
    reference = reply.rsplit(" ", 1)[1]
    assert "ZeroDivisionError" not in reply
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines() if reference in text]
    assert line["event"] == "command crashed" and "ZeroDivisionError" in line["exception"]
    rows = await core.audit_rows()
    assert rows[-1].detail["error"] == "unexpected" and str(rows[-1].outcome) == "failed"


async def test_knowledge_base_instructions_and_alerts(core: ChatCore, tmp_path: Path) -> None:
    oscar = console_for(core, tmp_path, "oscar")
    vera = console_for(core, tmp_path, "vera")
    assert (await oscar.submit('/kb add "Deploy guide" Run migrations before restarting; 100% safe_mode'))[
        0
    ].startswith("Added #")
    assert (
        "already in the knowledge base"
        in (await oscar.submit('/kb add "Again" Run migrations before restarting; 100% safe_mode'))[0]
    )
    (found,) = await vera.submit("/kb search migrations")
    assert "Deploy guide" in found and "resultado" in found
    assert "Nada encontrado" in (await vera.submit("/kb search 100%x"))[0]  # % is literal, not a wildcard
    assert "safe_mode" in (await vera.submit("/kb search safe_mode"))[0]
    async with core.sessions() as session:
        stored = (await session.execute(select(KnowledgeEntry))).scalars().all()
    assert len(stored) == 1 and stored[0].content == "Run migrations before restarting; 100% safe_mode"

    assert "Instruction #" in (await oscar.submit("/instructions add Always answer in metric units --priority 5"))[0]
    listed = (await vera.submit("/instructions"))[0]
    assert "p=5" in listed and "metric units" in listed
    async with core.sessions() as session:
        instruction_id = (await session.execute(select(Instruction.id))).scalar_one()
    assert "desativada" not in (await oscar.submit(f"/instructions remove {instruction_id}"))[0]
    assert "no active instruction" in (await oscar.submit(f"/instructions remove {instruction_id}"))[0]

    await core.add(
        Alert(
            kind="cpu", severity=Severity.CRITICAL, message="CPU at 97% for 5 minutes", dedupe_key="cpu", open_key="cpu"
        ),
        Alert(kind="disk", severity=Severity.WARNING, message="Disk 88% full", dedupe_key="disk", open_key="disk"),
    )
    listed = (await vera.submit("/alerts"))[0]
    assert listed.index("CRITICAL") < listed.index("WARNING")
    async with core.sessions() as session:
        cpu_id = (await session.execute(select(Alert.id).where(Alert.kind == "cpu"))).scalar_one()
    assert "papel operator" in (await vera.submit(f"/alerts ack {cpu_id}"))[0]
    assert f"Alert #{cpu_id} acknowledged" in (await oscar.submit(f"/alerts ack {cpu_id}"))[0]
    async with core.sessions() as session:
        alert = await session.get(Alert, cpu_id)
        assert alert is not None and alert.status == AlertStatus.ACKNOWLEDGED
        assert alert.acknowledged_by_user_id == core.user_ids["oscar"]


async def test_read_only_views_show_real_rows(core: ChatCore, tmp_path: Path) -> None:
    alice = console_for(core, tmp_path, "alice")
    oscar = console_for(core, tmp_path, "oscar")
    providers = (await alice.submit("/providers"))[0]
    assert "LM Studio" in providers and "lmstudio" in providers
    ais = (await alice.submit("/ais"))[0]
    assert "planner" in ais
    assert "No templates yet." in (await alice.submit("/templates"))[0]
    assert "No model has a track record yet." in (await alice.submit("/ranking"))[0]
    assert "No log entries match." in (await oscar.submit("/logs"))[0]

    async with core.sessions() as session:
        provider = (await session.execute(select(AiProvider))).scalars().first()
        assert provider is not None
        model = AiModel(provider_id=provider.id, model_key="qwen2.5-coder-7b", is_loaded=True)
        session.add(model)
        await session.flush()
        session.add_all(
            [
                AiQualityMetric(
                    model_id=model.id,
                    category="code",
                    runs=10,
                    successes=9,
                    failures=1,
                    success_rate=0.9,
                    mean_time_ms=2300.0,
                    mean_validation_score=87.0,
                    rank=1,
                ),
                ExecutionLog(model_id=model.id, event="execute", level=LogLevel.INFO, latency_ms=812),
                ExecutionLog(model_id=model.id, event="validate", level=LogLevel.ERROR, latency_ms=15),
                ExternalApiAccount(
                    user_id=core.user_ids["alice"],
                    service="openai",
                    account_name="team",
                    credits_remaining=Decimal("12.500000"),
                    credits_unit="USD",
                ),
            ]
        )
        await session.commit()
    ranking = (await alice.submit("/ranking code"))[0]
    assert "qwen2.5-coder-7b" in ranking and "90%" in ranking and "2.3s" in ranking
    logs = (await oscar.submit("/logs --level error"))[0]
    assert "validate" in logs and "execute" not in logs
    accounts = (await alice.submit("/accounts"))[0]
    assert "openai" in accounts and "12.5 USD" in accounts
    assert "No paid API accounts." in (await oscar.submit("/accounts"))[0]  # only their own
    status = (await alice.submit("/status"))[0]
    assert "qwen2.5-coder-7b (LM Studio)" in status and "CPU" in status
    help_text_en = (await oscar.submit("/help"))[0]
    assert "/logs" in help_text_en and "/models download" not in help_text_en  # admin-only hidden
    assert "Requires: admin" in (await oscar.submit("/help models download"))[0]


async def test_models_against_a_local_lm_studio(core: ChatCore, tmp_path: Path) -> None:
    async with FakeLMStudio() as lmstudio:
        lmstudio.script("qwen-small", loaded=False, size_bytes=900_000_000, params="1.5B")
        lmstudio.script("llama-mini", loaded=True)
        lmstudio.downloadable["hf/new-model"] = DownloadScript(total_bytes=4_000, steps=3)
        async with core.sessions() as session:
            await session.execute(
                update(AiProvider).where(AiProvider.name == "LM Studio").values(base_url=lmstudio.url)
            )
            await session.commit()
        core.dispatcher.services.settings = Settings(data_dir=tmp_path / "data")
        alice = console_for(core, tmp_path, "alice")
        tested = (await alice.submit("/providers test 'LM Studio'"))[0]
        assert "answers in" in tested and "2 model(s), 1 loaded" in tested
        listed = (await alice.submit("/models"))[0]
        assert listed.index("llama-mini") < listed.index("qwen-small")
        assert "Loaded qwen-small on LM Studio" in (await alice.submit("/models load qwen-small"))[0]
        assert lmstudio.loaded_instance_ids("qwen-small")
        assert "Unloaded llama-mini" in (await alice.submit("/models unload llama-mini"))[0]
        assert not lmstudio.loaded_instance_ids("llama-mini")
        assert "No server offers" in (await alice.submit("/models load ghost"))[0]
        recommended = (await alice.submit("/models recommend code"))[0]
        assert recommended.startswith("Best models for code:") and "qwen-small" in recommended
        assert "unknown task type" in (await alice.submit("/models recommend knitting"))[0]
        replies = await alice.submit("/models download hf/new-model --provider 'LM Studio'")
        assert replies[-1] == "Downloaded hf/new-model on LM Studio."
        progress = alice.messages[-2]
        assert progress.text.startswith("hf/new-model: [") and "100%" in progress.text
        async with core.sessions() as session:
            loaded = (await session.execute(select(AiModel.model_key).where(AiModel.is_loaded.is_(True)))).scalars()
            assert set(loaded) == {"qwen-small"}
        assert "papel admin" in (await console_for(core, tmp_path, "vera").submit("/models download x"))[0]
