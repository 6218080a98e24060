"""The models on a migrated database (SQLite and MariaDB): keys, constraints, cascades, types."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from bot.db.base import Base
from bot.db.engine import create_engine, is_sqlite, session_factory
from bot.db.migrate import upgrade_to_head
from bot.db.models import (
    AiModel,
    AiProvider,
    AiQualityMetric,
    Alert,
    AlertStatus,
    ChatConversation,
    ChatMessage,
    Credential,
    CreditUsage,
    ExecutionLog,
    MessageRole,
    ModelRating,
    OAuthState,
    ProviderKind,
    Subtask,
    SubtaskStatus,
    Task,
    TaskStatus,
    User,
    UserIdentity,
    UserRole,
)
from bot.db.seed import seed_initial_data
from bot.db.uow import unit_of_work
from tests.conftest import MARIADB_HOST, MARIADB_PORT, _admin_execute, require_mariadb


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def schema_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One migrated database per backend for the whole module (MariaDB DDL takes seconds)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('models') / 'template.db'}"
        asyncio.run(upgrade_to_head(url, backup_dir=None))
        yield url
        return
    require_mariadb()
    name = f"orch_test_models_{uuid.uuid4().hex[:10]}"
    _admin_execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        url = f"mysql+aiomysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
        asyncio.run(upgrade_to_head(url, backup_dir=None))
        yield url
    finally:
        _admin_execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
async def migrated_url(schema_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, seeded database with no other rows: a copy of the SQLite file, or the shared
    MariaDB database emptied (children first) and seeded again."""
    if is_sqlite(schema_url):
        source = schema_url.removeprefix("sqlite+aiosqlite:///")
        target = tmp_path / "orchestrator.db"
        await asyncio.to_thread(shutil.copyfile, source, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    engine = create_engine(schema_url)
    try:
        async with engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                await connection.execute(table.delete())
        async with session_factory(engine)() as session:
            await seed_initial_data(session)
            await session.commit()
    finally:
        await engine.dispose()
    yield schema_url


@pytest.fixture
async def sessions(migrated_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(migrated_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def _provider_and_model(session: AsyncSession, key: str = "qwen2.5-7b-instruct") -> AiModel:
    provider = AiProvider(name=f"prov-{key}", kind=ProviderKind.OLLAMA, base_url="http://127.0.0.1:11434")
    model = AiModel(provider=provider, model_key=key, display_name=key)
    session.add(model)
    await session.flush()
    return model


async def test_foreign_keys_are_enforced(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        session.add(Subtask(task_id=987654, seq=1, title="orphan"))
        with pytest.raises(IntegrityError):
            await session.flush()
        await session.rollback()
        session.add(Task(title="bad owner", user_id=987654))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_raw_sql_connections_enforce_foreign_keys(migrated_url: str) -> None:
    """Not only the ORM: every connection the engine hands out checks foreign keys."""
    setting = "PRAGMA foreign_keys" if is_sqlite(migrated_url) else "SELECT @@foreign_key_checks"
    engine = create_engine(migrated_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text(setting))).scalar_one() == 1
            with pytest.raises(IntegrityError):
                await connection.execute(
                    text(
                        "INSERT INTO chat_messages (conversation_id, role, content, created_at) "
                        "VALUES (424242, 'user', 'hi', CURRENT_TIMESTAMP)"
                    )
                )
    finally:
        await engine.dispose()


async def test_deleting_a_task_cascades_and_deleting_a_user_keeps_history(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        user = User(username="bob", role=UserRole.OPERATOR)
        model = await _provider_and_model(session)
        task = Task(title="write a parser", user=user, status=TaskStatus.RUNNING, priority=5)
        task.subtasks = [
            Subtask(seq=2, title="test it", executor_model_id=model.id),
            Subtask(seq=1, title="design", executor_model_id=model.id, depends_on=[]),
        ]
        session.add(task)
        await session.flush()
        session.add(ExecutionLog(task_id=task.id, subtask_id=task.subtasks[0].id, model_id=model.id, event="x"))
        session.add(CreditUsage(task_id=task.id, model_id=model.id, cost=Decimal("0.000125"), prompt_tokens=10))
        await session.commit()
        task_id, user_id = task.id, user.id

    async with sessions() as session:
        loaded = (
            await session.execute(select(Task).options(selectinload(Task.subtasks)).where(Task.id == task_id))
        ).scalar_one()
        assert [s.seq for s in loaded.subtasks] == [1, 2]
        assert loaded.subtasks[0].status == SubtaskStatus.PENDING
        await session.delete(await session.get(User, user_id))
        await session.commit()

    async with sessions() as session:
        orphan = await session.get(Task, task_id)
        assert orphan is not None
        assert orphan.user_id is None  # SET NULL: the work outlives its requester
        await session.delete(orphan)
        await session.commit()

    async with sessions() as session:
        assert (await session.execute(select(Subtask))).scalars().all() == []
        assert (await session.execute(select(ExecutionLog))).scalars().all() == []
        usage = (await session.execute(select(CreditUsage))).scalar_one()
        assert usage.task_id is None  # the money spent stays on record
        assert usage.cost == Decimal("0.000125")


async def test_unique_constraints_the_engine_relies_on(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        model = await _provider_and_model(session, "llama-3.1-8b")
        session.add(AiModel(provider_id=model.provider_id, model_key="llama-3.1-8b"))
        with pytest.raises(IntegrityError):
            await session.flush()
        await session.rollback()

    async with sessions() as session:
        model = await _provider_and_model(session, "mistral-7b")
        session.add(AiQualityMetric(model_id=model.id, category="code"))
        await session.flush()
        session.add(AiQualityMetric(model_id=model.id, category="code"))
        with pytest.raises(IntegrityError):
            await session.flush()
        await session.rollback()

    async with sessions() as session:
        user = User(username="carol")
        session.add(UserIdentity(user=user, platform="slack", platform_user_id="U123"))
        await session.flush()
        # Same display name elsewhere is fine; the same platform id twice is not.
        session.add(UserIdentity(user=User(username="carol2"), platform="discord", platform_user_id="U123"))
        await session.flush()
        session.add(UserIdentity(user=User(username="mallory"), platform="slack", platform_user_id="U123"))
        with pytest.raises(IntegrityError):
            await session.flush()


async def test_one_open_alert_per_condition(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        first = Alert(kind="cpu", message="CPU 93 %", dedupe_key="cpu:host", open_key="cpu:host")
        session.add(first)
        await session.commit()
        session.add(Alert(kind="cpu", message="CPU 95 %", dedupe_key="cpu:host", open_key="cpu:host"))
        with pytest.raises(IntegrityError):
            await session.commit()
        await session.rollback()
        first.status, first.open_key, first.resolved_at = AlertStatus.RESOLVED, None, datetime.now(UTC)
        await session.commit()
        session.add(Alert(kind="cpu", message="CPU 97 %", dedupe_key="cpu:host", open_key="cpu:host"))
        await session.commit()


async def test_rating_range_is_checked_by_the_database(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        model = await _provider_and_model(session, "phi-3")
        session.add(ModelRating(model_id=model.id, rating=5))
        session.add(ModelRating(model_id=model.id, rating=-1))
        await session.commit()
        session.add(ModelRating(model_id=model.id, rating=7))
        # MariaDB reports a CHECK violation as error 4025, which pymysql maps to OperationalError.
        with pytest.raises((IntegrityError, OperationalError), match="rating_range"):
            await session.commit()


async def test_enums_refuse_unknown_values(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        session.add(Task(title="t", status="exploded"))
        with pytest.raises(StatementError, match="exploded"):
            await session.flush()


async def test_types_round_trip_exactly(sessions: async_sessionmaker[AsyncSession]) -> None:
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    huge_prompt = "word " * 40_000  # 200 kB: beyond MariaDB's 64 kB TEXT
    async with sessions() as session:
        conversation = ChatConversation(platform="slack", channel_id="C1", thread_id="1700000000.000100")
        session.add(conversation)
        session.add(
            ChatMessage(conversation=conversation, role=MessageRole.USER, content="olá, ação ✓ 🚀", created_at=moment)
        )
        session.add(ExecutionLog(event="completion", prompt=huge_prompt, details={"nested": {"list": [1, 2.5, None]}}))
        await session.commit()
    async with sessions() as session:
        message = (await session.execute(select(ChatMessage))).scalar_one()
        assert message.content == "olá, ação ✓ 🚀"
        assert message.created_at == moment  # aware UTC, microseconds kept on both backends
        assert message.role == MessageRole.USER
        log = (await session.execute(select(ExecutionLog))).scalar_one()
        assert log.prompt == huge_prompt
        assert log.details == {"nested": {"list": [1, 2.5, None]}}
        assert log.created_at.tzinfo is UTC


async def test_timestamps_order_within_a_second(sessions: async_sessionmaker[AsyncSession]) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    async with sessions() as session:
        for offset in (3, 1, 2):
            session.add(ExecutionLog(event=f"e{offset}", created_at=base + timedelta(microseconds=offset)))
        await session.commit()
        events = (await session.execute(select(ExecutionLog.event).order_by(ExecutionLog.created_at))).scalars()
        assert list(events) == ["e1", "e2", "e3"]


def test_secret_columns_are_declared_for_the_vault() -> None:
    declared = {
        mapper.class_.__tablename__: mapper.class_.__secret_columns__
        for mapper in Base.registry.mappers
        if mapper.class_.__secret_columns__
    }
    assert declared == {"credentials": ("secret_blob",), "oauth_states": ("code_verifier_blob",)}
    assert Credential.__table__.c.secret_blob.type.__class__.__name__ == "LargeBinary"
    assert OAuthState.__table__.c.code_verifier_blob.nullable is False


async def test_unit_of_work_commits_or_rolls_back(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with unit_of_work(sessions) as session:
        session.add(User(username="dave"))

    async def failing_work() -> None:
        async with unit_of_work(sessions) as session:
            session.add(User(username="eve"))
            await session.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_work()
    async with sessions() as session:
        names = set((await session.execute(select(User.username))).scalars())
    assert "dave" in names
    assert "eve" not in names


async def test_seeded_rows_are_usable(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        admin = (await session.execute(select(User).where(User.username == "admin"))).scalar_one()
        assert admin.role == UserRole.ADMIN
        provider = (await session.execute(select(AiProvider))).scalar_one()
        assert provider.kind == ProviderKind.LMSTUDIO
        assert provider.base_url == "http://127.0.0.1:1234"


async def test_no_query_is_emitted_lazily(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Relationships that would load implicitly in async code raise instead of stalling."""
    async with sessions() as session:
        session.add(Task(title="lazy", subtasks=[Subtask(seq=1, title="a")]))
        await session.commit()
    async with sessions() as session:
        task = (await session.execute(select(Task))).scalar_one()
        with pytest.raises(Exception, match="lazy='raise'"):
            _ = task.subtasks
