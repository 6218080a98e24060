"""`orchestrator kb sync` and `orchestrator accounts sync-credits` as real subprocesses (SQLite, MariaDB)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from sqlalchemy import select

from bot.db.engine import create_engine, session_factory
from bot.db.models import Credential, CredentialStatus, ExternalApiAccount, KnowledgeEntry, KnowledgeSource, User
from bot.vault import Vault, load_keyring
from tests.fakes.billing import FakeOpenRouter

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
