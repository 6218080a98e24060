"""The vault's crypto and keyring: every tampering is an error naming the row, never a blank value."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bot.logs import configure_logging, get_logger
from bot.settings import load_settings
from bot.vault import (
    IntegrityError,
    Keyring,
    KeyringError,
    UnknownKeyError,
    Vault,
    VaultError,
    keyring_from_settings,
    open_vault,
)
from bot.vault import blob as blob_format
from bot.vault.keyring import (
    VaultKey,
    create_keyring,
    generate_key,
    load_keyring,
    parse_env_keys,
    read_keyring_file,
)

WHERE: dict[str, Any] = {"table": "credentials", "column": "secret_blob", "row_id": 7}
PLAINTEXT = "xoxb-very-secret-token-123"


def make_vault(*keys: VaultKey) -> Vault:
    chosen = keys or (generate_key(),)
    return Vault(keyring=Keyring(keys={k.id: k for k in chosen}, current_id=chosen[0].id))


def fixed_key(key_id: str, fill: int) -> VaultKey:
    from datetime import UTC, datetime

    return VaultKey(id=key_id, created_at=datetime.now(UTC), status="active", material=bytes([fill]) * 32)


def test_round_trip_text_bytes_and_secretstr() -> None:
    vault = make_vault()
    sealed = vault.seal(PLAINTEXT, **WHERE)
    assert PLAINTEXT.encode() not in sealed
    assert vault.open(sealed, **WHERE) == PLAINTEXT.encode()
    opened = vault.open_text(sealed, **WHERE)
    assert isinstance(opened, SecretStr)
    assert opened.get_secret_value() == PLAINTEXT
    binary = bytes(range(256))
    assert vault.open(vault.seal(binary, **WHERE), **WHERE) == binary
    assert vault.open(vault.seal(SecretStr("from-a-form"), **WHERE), **WHERE) == b"from-a-form"
    assert vault.open(vault.seal("", **WHERE), **WHERE) == b""


def test_blob_layout_matches_the_documented_format() -> None:
    key = fixed_key("k1", 1)
    sealed = make_vault(key).seal(PLAINTEXT, **WHERE)
    assert sealed[:2] == b"OV"
    assert sealed[2] == 1
    assert sealed[3] == 2
    assert sealed[4:6] == b"k1"
    assert len(sealed) == 2 + 1 + 1 + 2 + 12 + len(PLAINTEXT.encode()) + 16


def test_each_seal_uses_a_fresh_nonce() -> None:
    vault = make_vault()
    blobs = [vault.seal(PLAINTEXT, **WHERE) for _ in range(50)]
    nonces = {blob_format.parse(b).nonce for b in blobs}
    assert len(nonces) == 50
    assert len(set(blobs)) == 50


@pytest.mark.parametrize(
    "moved",
    [
        {"row_id": 8},
        {"row_id": "70"},
        {"column": "code_verifier_blob"},
        {"table": "oauth_states"},
    ],
    ids=["other-row", "other-row-str", "other-column", "other-table"],
)
def test_blob_moved_to_another_place_does_not_open(moved: dict[str, object]) -> None:
    vault = make_vault()
    sealed = vault.seal(PLAINTEXT, **WHERE)
    target = {**WHERE, **moved}
    with pytest.raises(IntegrityError) as caught:
        vault.open(sealed, **target)  # type: ignore[arg-type]
    message = str(caught.value)
    assert f"{target['table']}.{target['column']} of row {target['row_id']}" in message
    assert PLAINTEXT not in message
    assert caught.value.hint


def test_row_id_int_and_str_bind_alike() -> None:
    vault = make_vault()
    sealed = vault.seal(PLAINTEXT, table="t", column="c", row_id=12)
    assert vault.open(sealed, table="t", column="c", row_id="12") == PLAINTEXT.encode()


def test_two_rows_swapped_both_fail() -> None:
    vault = make_vault()
    first = vault.seal("secret-of-row-1", table="credentials", column="secret_blob", row_id=1)
    second = vault.seal("secret-of-row-2", table="credentials", column="secret_blob", row_id=2)
    for sealed, row_id in ((first, 2), (second, 1)):
        with pytest.raises(IntegrityError, match=f"row {row_id}"):
            vault.open(sealed, table="credentials", column="secret_blob", row_id=row_id)


def test_flipping_any_bit_anywhere_fails() -> None:
    vault = make_vault(fixed_key("key-a", 3))
    sealed = vault.seal(PLAINTEXT, **WHERE)
    for position in range(len(sealed)):
        for bit in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[position] ^= bit
            with pytest.raises((IntegrityError, UnknownKeyError)):
                vault.open(bytes(tampered), **WHERE)


def test_truncated_or_extended_blob_fails() -> None:
    vault = make_vault()
    sealed = vault.seal(PLAINTEXT, **WHERE)
    for length in range(len(sealed)):
        with pytest.raises(IntegrityError):
            vault.open(sealed[:length], **WHERE)
    with pytest.raises(IntegrityError):
        vault.open(sealed + b"\x00", **WHERE)


@pytest.mark.parametrize("value", [None, b"", b"plain text that was never sealed", b"OV\x02\x01k"])
def test_missing_or_foreign_values_are_errors_not_blanks(value: bytes | None) -> None:
    with pytest.raises(IntegrityError, match=r"credentials\.secret_blob of row 7"):
        make_vault().open(value, **WHERE)


def test_unknown_key_id() -> None:
    sealed = make_vault(fixed_key("old-key", 1)).seal(PLAINTEXT, **WHERE)
    with pytest.raises(UnknownKeyError) as caught:
        make_vault(fixed_key("new-key", 2)).open(sealed, **WHERE)
    assert "'old-key'" in caught.value.message
    assert "credentials.secret_blob of row 7" in caught.value.message
    assert caught.value.hint


def test_wrong_key_with_the_same_id() -> None:
    sealed = make_vault(fixed_key("k1", 1)).seal(PLAINTEXT, **WHERE)
    with pytest.raises(IntegrityError, match="not the one that sealed them"):
        make_vault(fixed_key("k1", 2)).open(sealed, **WHERE)


def test_relabelled_key_id_fails_even_when_both_keys_are_present() -> None:
    """Rewriting the header's key id to another held key must not pass authentication."""
    key_a, key_b = fixed_key("ka", 1), fixed_key("kb", 1)  # same material, different ids
    vault = make_vault(key_a, key_b)
    sealed = vault.seal(PLAINTEXT, **WHERE)
    relabelled = sealed.replace(b"ka", b"kb", 1)
    with pytest.raises(IntegrityError):
        vault.open(relabelled, **WHERE)


def test_old_keys_open_until_retired(tmp_path: Path) -> None:
    keyring = create_keyring(tmp_path / "keyring.json")
    vault = Vault(keyring=keyring)
    old_blob = vault.seal(PLAINTEXT, **WHERE)
    old_id = keyring.current_id
    new = generate_key(existing={old_id})
    keyring.add(new)
    keyring.make_current(new.id)
    new_blob = vault.seal(PLAINTEXT, **WHERE)
    assert blob_format.parse(new_blob).key_id == new.id
    assert vault.open(old_blob, **WHERE) == PLAINTEXT.encode()
    keyring.retire(old_id)
    with pytest.raises(UnknownKeyError, match="retired"):
        vault.open(old_blob, **WHERE)
    with pytest.raises(KeyringError, match="current key"):
        keyring.retire(new.id)


def test_oversized_plaintext_refused() -> None:
    with pytest.raises(VaultError, match="at most"):
        make_vault().seal(b"x" * (1024 * 1024 + 1), **WHERE)


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=2048),
    table=st.text(min_size=1, max_size=20),
    row_id=st.one_of(st.integers(min_value=0, max_value=2**63), st.text(min_size=1, max_size=30)),
)
def test_round_trip_property(plaintext: bytes, table: str, row_id: int | str) -> None:
    vault = make_vault(fixed_key("prop", 9))
    sealed = vault.seal(plaintext, table=table, column="c", row_id=row_id)
    assert vault.open(sealed, table=table, column="c", row_id=row_id) == plaintext


# --- keyring file ---------------------------------------------------------------------------


def test_create_keyring_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keyring.json"
    previous = os.umask(0)
    try:
        keyring = create_keyring(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["current"] == keyring.current_id
    assert document["keys"][0]["status"] == "active"
    assert len(base64.b64decode(document["keys"][0]["key"])) == 32
    with pytest.raises(KeyringError, match="already exists"):
        create_keyring(path)
    assert read_keyring_file(path).current.material == keyring.current.material


def test_first_use_creates_keyring_with_a_clear_message(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    environ = {"ORCH_DATA_DIR": str(tmp_path / "state")}
    vault = open_vault(load_settings(environ))
    path = tmp_path / "state" / "keyring.json"
    assert path.is_file()
    record = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert record["event"] == "vault.keyring_created"
    assert record["path"] == str(path)
    assert "back this file up" in record["advice"]
    assert vault.keyring.current.encoded() not in stream.getvalue()
    # Second start: the same key, no new file.
    again = open_vault(load_settings(environ))
    assert again.keyring.current.material == vault.keyring.current.material


def test_missing_keyring_without_create_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(KeyringError) as caught:
        load_keyring(path=tmp_path / "keyring.json")
    assert "no keyring" in caught.value.message
    assert "orchestrator keys init" in (caught.value.hint or "")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_keyring_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keyring.json"
    create_keyring(path)
    before = path.read_bytes()
    path.chmod(mode)
    with pytest.raises(KeyringError) as caught:
        read_keyring_file(path)
    assert f"{mode:04o}" in caught.value.message
    assert caught.value.hint == f"chmod 600 {path}"
    assert path.read_bytes() == before  # refused, never rewritten or "fixed" behind the user's back


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "top level"),
        (b'{"format": 2, "current": "a", "keys": []}', "unsupported format"),
        (b'{"format": 1, "current": "a", "keys": []}', "non-empty list"),
        (
            b'{"format": 1, "current": "a", "keys": [{"id": "a", "status": "active", '
            b'"created_at": "2025-01-01T00:00:00+00:00", "key": "c2hvcnQ="}]}',
            "exactly 32 bytes",
        ),
        (
            b'{"format": 1, "current": "b", "keys": [{"id": "a", "status": "active", '
            b'"created_at": "2025-01-01T00:00:00+00:00", "key": "' + base64.b64encode(b"k" * 32) + b'"}]}',
            "does not name a key",
        ),
        (
            b'{"format": 1, "current": "a", "keys": [{"id": "a", "status": "lost", '
            b'"created_at": "2025-01-01T00:00:00+00:00", "key": "' + base64.b64encode(b"k" * 32) + b'"}]}',
            "expected active or retired",
        ),
        (
            b'{"format": 1, "current": "a", "keys": [{"id": "a", "status": "retired", '
            b'"created_at": "2025-01-01T00:00:00+00:00", "key": "' + base64.b64encode(b"k" * 32) + b'"}]}',
            "current key 'a' is retired",
        ),
    ],
)
def test_corrupt_keyring_is_refused(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "keyring.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyringError, match="corrupt") as caught:
        read_keyring_file(path)
    assert problem in caught.value.message
    assert "backup" in (caught.value.hint or "")
    assert path.read_bytes() == content


def test_corrupt_keyring_message_never_shows_key_material(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    material = base64.b64encode(b"m" * 31).decode()
    path.write_text(
        json.dumps(
            {
                "format": 1,
                "current": "a",
                "keys": [{"id": "a", "status": "active", "created_at": "2025-01-01T00:00:00", "key": material}],
            }
        )
    )
    path.chmod(0o600)
    with pytest.raises(KeyringError) as caught:
        read_keyring_file(path)
    assert material not in str(caught.value)


def test_save_is_atomic_and_keeps_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = create_keyring(path)
    keyring.add(generate_key(existing={keyring.current_id}))
    previous = os.umask(0)
    try:
        keyring.save()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring.json"]
    assert len(read_keyring_file(path).all_keys()) == 2


def test_running_vault_picks_up_a_rotation_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    daemon_vault = Vault(keyring=create_keyring(path))
    other_process = read_keyring_file(path)
    new = generate_key(existing={other_process.current_id})
    other_process.add(new)
    sealed_elsewhere = Vault(keyring=other_process).seal_with(new, PLAINTEXT, **WHERE)
    other_process.make_current(new.id)
    other_process.save()
    assert daemon_vault.open(sealed_elsewhere, **WHERE) == PLAINTEXT.encode()
    sealed_by_daemon = daemon_vault.seal(PLAINTEXT, **WHERE)
    assert blob_format.parse(sealed_by_daemon).key_id == new.id


# --- environment keys -----------------------------------------------------------------------


def test_env_keys_first_is_current_and_file_is_not_used(tmp_path: Path) -> None:
    first = base64.b64encode(b"a" * 32).decode()
    second = base64.b64encode(b"b" * 32).decode()
    environ = {"ORCH_DATA_DIR": str(tmp_path), "ORCH_VAULT__KEYS": f"new:{first}, old:{second}"}
    keyring = keyring_from_settings(load_settings(environ), create=True)
    assert keyring.source == "environment"
    assert keyring.current_id == "new"
    assert {k.id for k in keyring.all_keys()} == {"new", "old"}
    assert not (tmp_path / "keyring.json").exists()
    sealed_old = Vault(keyring=parse_env_keys(f"old:{second}")).seal(PLAINTEXT, **WHERE)
    assert Vault(keyring=keyring).open(sealed_old, **WHERE) == PLAINTEXT.encode()
    with pytest.raises(KeyringError, match="ORCH_VAULT__KEYS"):
        keyring.add(generate_key())


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "set but empty"),
        (" , ", "set but empty"),
        ("no-separator", "not <key id>:<base64 key>"),
        ("bad id!:" + base64.b64encode(b"a" * 32).decode(), "not <key id>:<base64 key>"),
        ("k1:" + base64.b64encode(b"short").decode(), "exactly 32 bytes"),
        ("k1:not*base64*at*all", "exactly 32 bytes"),
        (
            "k1:" + base64.b64encode(b"a" * 32).decode() + ",k1:" + base64.b64encode(b"b" * 32).decode(),
            "appears twice",
        ),
    ],
)
def test_malformed_env_keys(value: str, problem: str) -> None:
    with pytest.raises(KeyringError) as caught:
        parse_env_keys(value)
    assert problem in caught.value.message
    for part in value.split(","):
        material = part.partition(":")[2]
        if len(material) > 8:
            assert material not in str(caught.value)


# --- redaction ------------------------------------------------------------------------------


def test_reprs_never_show_key_material_or_secrets(tmp_path: Path) -> None:
    keyring = create_keyring(tmp_path / "keyring.json")
    key = keyring.current
    vault = Vault(keyring=keyring)
    opened = vault.open_text(vault.seal(PLAINTEXT, **WHERE), **WHERE)
    for shown in (repr(key), str(key), repr(keyring), repr(vault), repr(opened), str(opened), f"{opened}"):
        assert key.encoded() not in shown
        assert PLAINTEXT not in shown
    assert str(opened) == "**********"


def test_opened_secret_is_redacted_if_it_reaches_a_log_line() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    vault = make_vault()
    secret = "ghp_uniqueTokenValue98765"
    opened = vault.open_text(vault.seal(secret, **WHERE), **WHERE)
    logger = get_logger("test")
    logger.info(f"calling the API with {opened.get_secret_value()}", detail=opened.get_secret_value())
    logger.info("repr", value=repr(opened))
    output = stream.getvalue()
    assert secret not in output
    assert "[REDACTED]" in output


def test_new_key_material_is_redacted_in_logs() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    key = generate_key()
    get_logger("test").info(f"oops {key.encoded()}")
    assert key.encoded() not in stream.getvalue()
