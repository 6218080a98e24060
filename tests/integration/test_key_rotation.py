"""Key rotation on real databases (SQLite and MariaDB): every secret moves, or none does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db.engine import create_engine, session_factory
from bot.db.models import Credential, OAuthState, User
from bot.vault import IntegrityError, KeyringError, UnknownKeyError, Vault
from bot.vault import blob as blob_format
from bot.vault.keyring import create_keyring, generate_key, parse_env_keys, read_keyring_file
from bot.vault.rotation import count_blobs_by_key, retire_key, rotate_keys

REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = ("credentials", "secret_blob")
OAUTH = ("oauth_states", "code_verifier_blob")


async def prepare_schema(url: str) -> None:
    """The real schema at head, with the initial data, as `orchestrator migrate` leaves it."""
    from bot.db.migrate import upgrade_to_head

    await upgrade_to_head(url, backup_dir=None)


@pytest.fixture
async def engine(migrated_db: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_db)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    """For the tests that run real processes: SQLite only, to keep the suite fast."""
    await prepare_schema(sqlite_url)
    engine = create_engine(sqlite_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def seed(
    engine: AsyncEngine, vault: Vault, *, credentials: int = 3, oauth_states: int = 2
) -> dict[tuple[str, str, int], str]:
    """Rows with sealed secrets, the way a repository stores them: flush for the id, then seal."""
    from datetime import UTC, datetime, timedelta

    plaintexts: dict[tuple[str, str, int], str] = {}
    async with session_factory(engine)() as session, session.begin():
        user = User(username=f"owner-{os.urandom(3).hex()}")
        session.add(user)
        await session.flush()
        rows = [
            Credential(user_id=user.id, name=f"cred-{number}", service="github", secret_blob=b"")
            for number in range(credentials)
        ]
        session.add_all(rows)
        await session.flush()
        for number, credential in enumerate(rows):
            secret = f"ghp_token_{number}_{os.urandom(6).hex()}"
            credential.secret_blob = vault.seal(secret, table="credentials", column="secret_blob", row_id=credential.id)
            plaintexts[(*CREDENTIALS, credential.id)] = secret
        for number in range(oauth_states):
            state = OAuthState(
                state_hash=os.urandom(16).hex(),
                user_id=user.id,
                service="google",
                code_verifier_blob=b"",
                redirect_uri="http://127.0.0.1/callback",
                expires_at=datetime.now(UTC) + timedelta(minutes=10),
            )
            session.add(state)
            await session.flush()
            verifier = f"verifier-{number}-{os.urandom(8).hex()}"
            state.code_verifier_blob = vault.seal(
                verifier, table="oauth_states", column="code_verifier_blob", row_id=state.id
            )
            plaintexts[(*OAUTH, state.id)] = verifier
    return plaintexts


async def stored_blobs(engine: AsyncEngine) -> dict[tuple[str, str, int], bytes]:
    async with engine.connect() as connection:
        rows: dict[tuple[str, str, int], bytes] = {}
        for row_id, value in (await connection.execute(select(Credential.id, Credential.secret_blob))).all():
            rows[(*CREDENTIALS, row_id)] = bytes(value)
        for row_id, value in (await connection.execute(select(OAuthState.id, OAuthState.code_verifier_blob))).all():
            rows[(*OAUTH, row_id)] = bytes(value)
    return rows


def open_all(vault: Vault, blobs: dict[tuple[str, str, int], bytes]) -> dict[tuple[str, str, int], str]:
    return {
        place: vault.open_text(value, table=place[0], column=place[1], row_id=place[2]).get_secret_value()
        for place, value in blobs.items()
    }


async def test_rotation_reseals_every_secret_and_all_still_open(engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = create_keyring(path)
    old_id = keyring.current_id
    plaintexts = await seed(engine, Vault(keyring=keyring))
    before = await stored_blobs(engine)

    report = await rotate_keys(engine=engine, keyring=keyring)

    assert report.previous_key_id == old_id
    assert report.new_key_id != old_id
    assert report.resealed == {"credentials.secret_blob": 3, "oauth_states.code_verifier_blob": 2}
    assert report.total == 5
    after = await stored_blobs(engine)
    assert all(after[place] != before[place] for place in before)
    assert {blob_format.parse(value).key_id for value in after.values()} == {report.new_key_id}
    on_disk = read_keyring_file(path)  # what a restarted daemon would load
    assert on_disk.current_id == report.new_key_id
    assert on_disk.get(old_id).status == "active"
    assert open_all(Vault(keyring=on_disk), after) == plaintexts
    assert await count_blobs_by_key(engine) == {report.new_key_id: 5}


async def test_old_key_opens_until_retired_and_retire_refuses_while_in_use(engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = create_keyring(path)
    old_id = keyring.current_id
    daemon_vault = Vault(keyring=read_keyring_file(path))  # loaded before the rotation
    await seed(engine, daemon_vault)
    old_blob = (await stored_blobs(engine))[(*CREDENTIALS, 1)]
    await rotate_keys(engine=engine, keyring=keyring)

    # A value sealed with the old key (e.g. restored from before the rotation) still opens.
    async with engine.begin() as connection:
        await connection.execute(update(Credential).where(Credential.id == 1).values(secret_blob=old_blob))
    assert daemon_vault.open(old_blob, table="credentials", column="secret_blob", row_id=1)
    with pytest.raises(KeyringError, match="still seals 1 stored value") as caught:
        await retire_key(engine=engine, keyring=keyring, key_id=old_id)
    assert "orchestrator keys rotate" in (caught.value.hint or "")
    assert read_keyring_file(path).get(old_id).status == "active"

    report = await rotate_keys(engine=engine, keyring=keyring, retire_old=True)
    assert set(report.retired) == {old_id, *({k.id for k in keyring.all_keys()} - {old_id, report.new_key_id})}
    with pytest.raises(UnknownKeyError, match="retired"):
        Vault(keyring=read_keyring_file(path)).open(old_blob, table="credentials", column="secret_blob", row_id=1)
    with pytest.raises(KeyringError, match="current key"):
        await retire_key(engine=engine, keyring=keyring, key_id=report.new_key_id)


async def test_retire_an_unused_key(engine: AsyncEngine, tmp_path: Path) -> None:
    keyring = create_keyring(tmp_path / "keyring.json")
    await seed(engine, Vault(keyring=keyring), credentials=1, oauth_states=0)
    old_id = keyring.current_id
    await rotate_keys(engine=engine, keyring=keyring)
    await retire_key(engine=engine, keyring=keyring, key_id=old_id)
    assert read_keyring_file(tmp_path / "keyring.json").get(old_id).status == "retired"
    with pytest.raises(KeyringError, match="already retired"):
        await retire_key(engine=engine, keyring=keyring, key_id=old_id)
    with pytest.raises(UnknownKeyError, match="no key with id"):
        await retire_key(engine=engine, keyring=keyring, key_id="k-never-existed")


async def test_one_bad_row_aborts_rotation_and_changes_nothing(engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = create_keyring(path)
    await seed(engine, Vault(keyring=keyring))
    blobs = await stored_blobs(engine)
    # The bad row is in oauth_states, processed after credentials: those updates must roll back.
    bad_id = max(row_id for table, _c, row_id in blobs if table == "oauth_states")
    good = blobs[(*OAUTH, bad_id)]
    stranger = Vault(keyring=parse_env_keys(f"stranger:{generate_key().encoded()}"))
    failures: list[tuple[bytes, type[Exception]]] = [
        (good[:-1] + bytes([good[-1] ^ 0x01]), IntegrityError),
        (good[:20] + bytes([good[20] ^ 0x40]) + good[21:], IntegrityError),
        (stranger.seal("x", table="oauth_states", column="code_verifier_blob", row_id=bad_id), UnknownKeyError),
        (b"not a sealed value at all", IntegrityError),
        (good[:-5], IntegrityError),
    ]
    for bad, expected in failures:
        async with engine.begin() as connection:
            await connection.execute(update(OAuthState).where(OAuthState.id == bad_id).values(code_verifier_blob=bad))
        before = await stored_blobs(engine)
        keyring_before = json.loads(path.read_text())

        with pytest.raises(expected) as caught:
            await rotate_keys(engine=engine, keyring=keyring)

        message = str(caught.value)
        assert f"oauth_states.code_verifier_blob of row {bad_id}" in message
        assert "nothing was changed" in message
        assert await stored_blobs(engine) == before
        assert json.loads(path.read_text()) == keyring_before
        assert keyring.current_id == keyring_before["current"]
        assert len(keyring.all_keys()) == 1


async def test_environment_keys_reseal_under_the_first_key(engine: AsyncEngine) -> None:
    old, new = generate_key(), generate_key()
    plaintexts = await seed(engine, Vault(keyring=parse_env_keys(f"old:{old.encoded()}")))
    keyring = parse_env_keys(f"new:{new.encoded()},old:{old.encoded()}")

    report = await rotate_keys(engine=engine, keyring=keyring)

    assert not report.created_key
    assert report.new_key_id == "new"
    assert report.total == 5
    after = await stored_blobs(engine)
    assert await count_blobs_by_key(engine) == {"new": 5}
    assert open_all(Vault(keyring=parse_env_keys(f"new:{new.encoded()}")), after) == plaintexts
    with pytest.raises(KeyringError, match="remove the old:"):
        await retire_key(engine=engine, keyring=keyring, key_id="old")


# --- the command line, as a real process --------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=env,
        cwd=env["ORCH_DATA_DIR"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_env(tmp_path: Path, db_url: str, **extra: str) -> dict[str, str]:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ORCH_")}
    env.update(
        ORCH_DATA_DIR=str(state),
        ORCH_DATABASE_URL=db_url,
        PYTHONPATH=str(REPO),
        ORCH_LOG__FORMAT="json",
        **extra,
    )
    return env


async def test_cli_init_list_rotate_retire(engine: AsyncEngine, migrated_db: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, migrated_db)
    path = tmp_path / "state" / "keyring.json"

    created = run_cli("keys", "init", env=env)
    assert created.returncode == 0, created.stderr
    assert str(path) in created.stdout
    assert "back this file up" in created.stdout
    keyring = read_keyring_file(path)
    old_id = keyring.current_id
    plaintexts = await seed(engine, Vault(keyring=keyring))

    again = run_cli("keys", "init", env=env)
    assert again.returncode == 2
    assert "already exists" in again.stderr

    listed = run_cli("keys", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["keys"] == [
        {"id": old_id, "status": "current", "created_at": keyring.current.created_at.isoformat(), "values": 5}
    ]

    rotated = run_cli("keys", "rotate", "--json", env=env)
    assert rotated.returncode == 0, rotated.stderr
    report = json.loads(rotated.stdout)
    assert report["total"] == 5
    assert report["previous_key_id"] == old_id
    new_id = report["new_key_id"]
    on_disk = read_keyring_file(path)
    assert on_disk.current_id == new_id
    assert open_all(Vault(keyring=on_disk), await stored_blobs(engine)) == plaintexts

    retired = run_cli("keys", "retire", old_id, env=env)
    assert retired.returncode == 0, retired.stderr
    text_list = run_cli("keys", "list", env=env)
    assert old_id in text_list.stdout
    assert "retired" in text_list.stdout

    everything = "".join(p.stdout + p.stderr for p in (created, listed, rotated, retired, text_list))
    for key in on_disk.all_keys():
        assert key.encoded() not in everything
    for secret in plaintexts.values():
        assert secret not in everything


async def test_cli_refuses_an_unsafe_keyring_and_touches_nothing(
    sqlite_engine: AsyncEngine, sqlite_url: str, tmp_path: Path
) -> None:
    engine = sqlite_engine
    env = cli_env(tmp_path, sqlite_url)
    path = tmp_path / "state" / "keyring.json"
    keyring = create_keyring(path)
    await seed(engine, Vault(keyring=keyring), credentials=2, oauth_states=0)
    before = await stored_blobs(engine)
    path.chmod(0o644)
    keyring_bytes = path.read_bytes()

    result = run_cli("keys", "rotate", env=env)

    assert result.returncode == 2
    assert "mode 0644" in result.stderr
    assert f"chmod 600 {path}" in result.stderr
    assert "Traceback" not in result.stderr
    assert await stored_blobs(engine) == before
    assert path.read_bytes() == keyring_bytes


async def test_cli_environment_keys_print_new_key_then_rotate(
    sqlite_engine: AsyncEngine, sqlite_url: str, tmp_path: Path
) -> None:
    engine = sqlite_engine
    old = generate_key()
    env = cli_env(tmp_path, sqlite_url, ORCH_VAULT__KEYS=f"old:{old.encoded()}")
    plaintexts = await seed(engine, Vault(keyring=parse_env_keys(f"old:{old.encoded()}")))

    printed = run_cli("keys", "rotate", "--print-new-key", env=env)
    assert printed.returncode == 0, printed.stderr
    new_entry = printed.stdout.strip()
    assert parse_env_keys(new_entry).current.material != old.material
    assert new_entry not in printed.stderr
    assert await count_blobs_by_key(engine) == {"old": 5}  # printing changes nothing

    env["ORCH_VAULT__KEYS"] = f"{new_entry},old:{old.encoded()}"
    rotated = run_cli("keys", "rotate", "--json", env=env)
    assert rotated.returncode == 0, rotated.stderr
    new_id = new_entry.split(":")[0]
    assert json.loads(rotated.stdout)["new_key_id"] == new_id
    assert "you may remove them" in rotated.stderr
    assert await count_blobs_by_key(engine) == {new_id: 5}
    assert open_all(Vault(keyring=parse_env_keys(new_entry)), await stored_blobs(engine)) == plaintexts
    assert not (tmp_path / "state" / "keyring.json").exists()


async def test_killed_rotation_loses_no_secret(sqlite_engine: AsyncEngine, sqlite_url: str, tmp_path: Path) -> None:
    """SIGKILL the CLI once it has written the new key; whatever it did, every secret still opens."""
    engine = sqlite_engine
    env = cli_env(tmp_path, sqlite_url)
    path = tmp_path / "state" / "keyring.json"
    keyring = create_keyring(path)
    plaintexts = await seed(engine, Vault(keyring=keyring), credentials=150, oauth_states=0)
    before = path.stat().st_ino
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "keys", "rotate"],
        env=env,
        cwd=env["ORCH_DATA_DIR"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while path.stat().st_ino == before and process.poll() is None:
            assert time.monotonic() < deadline, "the rotation never wrote the keyring"
            time.sleep(0.001)  # polling the file for the crash point, not waiting for time
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    survivor = read_keyring_file(path)
    assert open_all(Vault(keyring=survivor), await stored_blobs(engine)) == plaintexts
    # And a rotation run afterwards completes normally.
    report = await rotate_keys(engine=engine, keyring=survivor)
    assert report.total == 150
    assert open_all(Vault(keyring=read_keyring_file(path)), await stored_blobs(engine)) == plaintexts
