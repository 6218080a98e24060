"""`orchestrator kb sync` and `orchestrator accounts sync-credits` as real subprocesses (SQLite, MariaDB).

Embeddings: the CLI builds `[knowledge] embedding_model` the way the daemon does — the lexical
embedder in-process, or a provider's `/v1/embeddings` (a wire fake here) — and the admin API's
semantic search then finds what it stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db.engine import create_engine, session_factory
from bot.db.models import (
    AiModel,
    AiProvider,
    Credential,
    CredentialStatus,
    ExternalApiAccount,
    KnowledgeEntry,
    KnowledgeSource,
    ProviderKind,
    User,
)
from bot.knowledge.embedder import LEXICAL, build_embedder
from bot.settings import Settings
from bot.vault import Vault, load_keyring
from tests.fakes.billing import FakeOpenRouter
from tests.fakes.openai_compat import FakeOpenAICompat
from tests.integration import test_api_harness as harness

KEY = "sk-or-v1-" + "c0ffee12" * 8


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, env=env)
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _env(url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ORCH_")}
    env.update(ORCH_DATABASE_URL=url, ORCH_DATA_DIR=str(data_dir), ORCH_LOG__LEVEL="WARNING", **extra)
    return env


async def test_kb_sync_from_the_cli(migrated_db: str, tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "readme.md").write_text("# Readme\n\ncli synced words")
    engine = create_engine(migrated_db)
    try:
        async with session_factory(engine)() as session:
            source = KnowledgeSource(name="cli-docs", kind="directory", uri=str(root), settings={})
            session.add(source)
            await session.commit()
            source_id = source.id
        env = _env(migrated_db, tmp_path, ORCH_KNOWLEDGE__ALLOWED_ROOTS=json.dumps([str(root)]))
        code, out, err = await _cli(env, "kb", "sync", str(source_id), "--json")
        assert code == 0, err
        report = json.loads(out)
        assert (report["documents"], report["added"]) == (1, 1)
        async with session_factory(engine)() as session:
            titles = (await session.execute(select(KnowledgeEntry.title)
                                            .where(KnowledgeEntry.source_id == source_id))).scalars().all()
        assert titles == ["Readme"]
        # Outside the allowed roots: a clear error, exit status 2, no traceback.
        code, out, err = await _cli(_env(migrated_db, tmp_path), "kb", "sync", str(source_id))
        assert code == 2 and "allowed_roots" in err and "Traceback" not in err
    finally:
        await engine.dispose()


async def test_accounts_sync_credits_from_the_cli(migrated_db: str, tmp_path: Path) -> None:
    vault = Vault(keyring=load_keyring(path=tmp_path / "keyring.json", create=True))
    engine = create_engine(migrated_db)
    try:
        async with FakeOpenRouter(key=KEY) as openrouter:
            async with session_factory(engine)() as session:
                user = (await session.execute(select(User).limit(1))).scalar_one()
                credential = Credential(user_id=user.id, name="or-cli", service="openrouter", secret_blob=b"",
                                        status=CredentialStatus.ACTIVE)
                session.add(credential)
                await session.flush()
                credential.secret_blob = vault.seal(json.dumps({"api_key": KEY}), table="credentials",
                                                    column="secret_blob", row_id=credential.id)
                account = ExternalApiAccount(user_id=user.id, service="openrouter", account_name="cli",
                                             credential_id=credential.id)
                session.add(account)
                await session.commit()
                account_id = account.id
            env = _env(migrated_db, tmp_path,
                       ORCH_CREDITS__BASE_URLS=json.dumps({"openrouter": openrouter.base_url}))
            code, out, err = await _cli(env, "accounts", "sync-credits", str(account_id))
            assert code == 0, err
            assert "balance 74.75" in out and KEY not in out + err
    finally:
        await engine.dispose()


async def _docs_source(engine: AsyncEngine, root: Path, name: str) -> int:
    root.mkdir()
    (root / "vault.md").write_text("# Vault\n\nThe vault seals every secret with a key from the keyring.")
    (root / "garden.md").write_text("# Garden\n\nWater the tomatoes every morning and keep the garden soil moist.")
    async with session_factory(engine)() as session:
        source = KnowledgeSource(name=name, kind="directory", uri=str(root), settings={})
        session.add(source)
        await session.commit()
        return source.id


async def _embedded(engine: AsyncEngine, source_id: int) -> dict[str, str | None]:
    columns = (KnowledgeEntry.title, KnowledgeEntry.embedding_model, KnowledgeEntry.embedding)
    async with session_factory(engine)() as session:
        rows = (await session.execute(select(*columns).where(KnowledgeEntry.source_id == source_id))).all()
    return {title: (model if vector else None) for title, model, vector in rows}


async def test_kb_sync_embeds_with_the_configured_embedder_and_semantic_search_finds_it(
    migrated_db: str, tmp_path: Path,
) -> None:
    root = tmp_path / "docs"
    engine = create_engine(migrated_db)
    try:
        source_id = await _docs_source(engine, root, "cli-embedded")
        env = _env(migrated_db, tmp_path, ORCH_KNOWLEDGE__ALLOWED_ROOTS=json.dumps([str(root)]),
                   ORCH_KNOWLEDGE__EMBEDDING_MODEL=LEXICAL)
        code, out, err = await _cli(env, "kb", "sync", str(source_id))
        assert code == 0, err
        assert f"embedded 2 chunks with {LEXICAL}" in out
        assert await _embedded(engine, source_id) == {"Vault": LEXICAL, "Garden": LEXICAL}

        # The daemon's embedder (same builder) ranks the entries for a question in other words.
        settings = Settings(data_dir=tmp_path, knowledge={"embedding_model": LEXICAL})
        choice = await build_embedder(settings, session_factory(engine))
        assert choice.embedder is not None
        api = await harness.make_api(migrated_db, tmp_path, services={"embedder": choice.embedder})
        try:
            _, found, _ = await api.call("GET", "/knowledge/search", expect=200, params={
                "q": "how often should tomatoes get water", "mode": "semantic", "source_id": source_id})
            assert found["items"][0]["entry"]["title"] == "Garden"
        finally:
            await harness.close_api(api)
    finally:
        await engine.dispose()


async def test_kb_sync_embeds_through_a_provider_and_skips_embeddings_it_cannot_have(
    migrated_db: str, tmp_path: Path,
) -> None:
    engine = create_engine(migrated_db)
    try:
        async with FakeOpenAICompat() as server:
            server.script("embed-small", model_type="embedding", embedding_dims=16)
            async with session_factory(engine)() as session:
                provider = AiProvider(name="embeddings-server", kind=ProviderKind.OPENAI_COMPATIBLE,
                                      base_url=server.url, is_enabled=True, is_local=True, priority=5, settings={})
                session.add(provider)
                await session.flush()
                session.add(AiModel(provider_id=provider.id, model_key="embed-small", capabilities={}))
                await session.commit()
            root = tmp_path / "docs"
            source_id = await _docs_source(engine, root, "cli-provider")
            allowed = json.dumps([str(root)])
            env = _env(migrated_db, tmp_path, ORCH_KNOWLEDGE__ALLOWED_ROOTS=allowed,
                       ORCH_KNOWLEDGE__EMBEDDING_MODEL="embed-small")
            code, out, err = await _cli(env, "kb", "sync", str(source_id), "--json")
            assert code == 0, err
            report = json.loads(out)
            assert (report["embedded"], report["embedding_model"], report["embeddings_skipped"]) == (2, "embed-small",
                                                                                                  None)
            assert [call.path for call in server.calls("/v1/embeddings")] == ["/v1/embeddings"]
            assert await _embedded(engine, source_id) == {"Vault": "embed-small", "Garden": "embed-small"}

            # The provider's server stops answering: the text is still synchronised, and the report says why.
            (root / "new.md").write_text("# New\n\nA third document.")
            await server.close()
            code, out, err = await _cli(env, "kb", "sync", str(source_id))
            assert code == 0, err
            assert "+1" in out and "embeddings skipped: no provider offering 'embed-small' answers" in out
            assert (await _embedded(engine, source_id))["New"] is None

        env = _env(migrated_db, tmp_path, ORCH_KNOWLEDGE__ALLOWED_ROOTS=allowed,
                   ORCH_KNOWLEDGE__EMBEDDING_MODEL="no-such-embedder")
        code, out, err = await _cli(env, "kb", "sync", str(source_id), "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["embedded"] == 0 and "no enabled provider offers" in report["embeddings_skipped"]
    finally:
        await engine.dispose()


async def test_kb_sync_sends_the_sources_credential_from_the_cli(migrated_db: str, tmp_path: Path) -> None:
    from tests.fakes.web_pages import WebPages

    token = "cli-kb-" + "5eed" * 8
    engine = create_engine(migrated_db)
    try:
        async with WebPages() as site:
            site.page("/private.md", "# Private\n\ncli words", content_type="text/markdown",
                      require={"Authorization": f"Bearer {token}"})
            async with session_factory(engine)() as session:
                user = (await session.execute(select(User).limit(1))).scalar_one()
                credential = Credential(user_id=user.id, name="kb-cli", service="intranet", secret_blob=b"",
                                        status=CredentialStatus.ACTIVE)
                session.add(credential)
                await session.flush()
                vault = Vault(keyring=load_keyring(path=tmp_path / "data" / "keyring.json", create=True))
                credential.secret_blob = vault.seal(json.dumps({"token": token}), table="credentials",
                                                    column="secret_blob", row_id=credential.id)
                source = KnowledgeSource(name="cli-private", kind="url", uri=f"{site.url}/private.md",
                                         credential_id=credential.id, settings={})
                session.add(source)
                await session.commit()
                source_id = source.id
            networks = json.dumps(["127.0.0.0/8"])
            env = _env(migrated_db, tmp_path / "data", ORCH_KNOWLEDGE__ALLOWED_PRIVATE_NETWORKS=networks)
            code, out, err = await _cli(env, "kb", "sync", str(source_id))
            assert code == 0, err
            assert "+1" in out and token not in out + err
            # Without the keyring the sync fails with the keyring's own reason, not a traceback.
            env = _env(migrated_db, tmp_path / "elsewhere", ORCH_KNOWLEDGE__ALLOWED_PRIVATE_NETWORKS=networks)
            code, out, err = await _cli(env, "kb", "sync", str(source_id))
            assert code == 2 and "cannot be decrypted" in err and "Traceback" not in err
            assert token not in out + err
    finally:
        await engine.dispose()
