"""Where the vault's AES-256 keys live: a 0600 JSON file, or the `ORCH_VAULT__KEYS` variable.

The file (default `<data dir>/keyring.json`)::

    {"format": 1,
     "current": "k20250611-3fa2c1",
     "keys": [{"id": "k20250611-3fa2c1", "created_at": "2025-06-11T09:00:00+00:00",
               "status": "active", "key": "<base64 of 32 random bytes>"}]}

`current` seals new values; every `active` key still opens what it sealed; a `retired` key keeps
its material in the file (an older database backup may need it) but the vault refuses to use it.
The file is refused if group or other users may read or write it, because anyone who can read it
can read every stored secret.

It is rewritten atomically (temporary file in the same directory, fsync, rename, fsync of the
directory), so a crash leaves the old file or the new one, never half of one.

With `ORCH_VAULT__KEYS=<id>:<base64>,<id>:<base64>` the file is not used at all; the first key
is current and the list can only change by editing the variable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bot.logs import get_logger, register_secret
from bot.vault.blob import is_valid_key_id
from bot.vault.errors import KeyringError, UnknownKeyError

KEY_SIZE = 32
KEYRING_FORMAT = 1
ENV_VARIABLE = "ORCH_VAULT__KEYS"
KeyStatus = Literal["active", "retired"]
_STATUSES: tuple[KeyStatus, ...] = ("active", "retired")

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class VaultKey:
    """One AES-256 key; its material never appears in repr, str or logs."""

    id: str
    created_at: datetime
    status: KeyStatus
    material: bytes = field(repr=False)

    def encoded(self) -> str:
        """The key material as base64, the form stored in the file and the variable."""
        return base64.b64encode(self.material).decode("ascii")


def generate_key(*, existing: set[str] | frozenset[str] = frozenset()) -> VaultKey:
    """A fresh random key whose id (creation date + random suffix) is unique in `existing`."""
    now = datetime.now(UTC).replace(microsecond=0)
    while True:
        key_id = f"k{now:%Y%m%d}-{secrets.token_hex(3)}"
        if key_id not in existing:
            break
    key = VaultKey(id=key_id, created_at=now, status="active", material=os.urandom(KEY_SIZE))
    register_secret(key.encoded())
    return key


class Keyring:
    """The set of keys the vault may use, and which one seals new values.

    A file-backed keyring notices when another process (e.g. `orchestrator keys rotate` while the
    daemon runs) rewrote the file and reloads it, so a running daemon picks up a new current key
    without a restart.
    """

    def __init__(
        self,
        *,
        keys: dict[str, VaultKey],
        current_id: str,
        path: Path | None = None,
    ) -> None:
        if current_id not in keys:
            raise KeyringError(f"the current key {current_id!r} is not in the keyring")
        self._keys = dict(keys)
        self._current_id = current_id
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        for key in keys.values():
            register_secret(key.encoded())

    def __repr__(self) -> str:
        return f"Keyring(source={self.source!r}, current={self._current_id!r}, keys={sorted(self._keys)!r})"

    @property
    def source(self) -> Literal["file", "environment"]:
        """Where the keys came from, which decides whether this process can change them."""
        return "file" if self.path is not None else "environment"

    @property
    def current_id(self) -> str:
        """The id of the key new values are sealed with."""
        return self._current_id

    @property
    def current(self) -> VaultKey:
        """The key new values are sealed with."""
        return self._keys[self._current_id]

    def all_keys(self) -> list[VaultKey]:
        """Every key, oldest first."""
        return sorted(self._keys.values(), key=lambda key: (key.created_at, key.id))

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def get(self, key_id: str) -> VaultKey:
        """The key with this id, whatever its status; UnknownKeyError if there is none."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKeyError(
                f"the keyring {self._where()} has no key with id {key_id!r}",
                hint=self._missing_key_hint(),
            ) from None

    def usable(self, key_id: str) -> VaultKey:
        """The key with this id if it may still open values; UnknownKeyError otherwise."""
        if key_id not in self._keys and self.refresh():
            return self.usable(key_id)
        key = self.get(key_id)
        if key.status == "retired":
            raise UnknownKeyError(
                f"key {key_id!r} is retired, so the vault no longer opens values sealed with it",
                hint=(
                    f'if you restored an older database backup, set the key\'s status back to "active" in {self.path}'
                    if self.path
                    else "add the key back to ORCH_VAULT__KEYS"
                ),
            )
        return key

    def _where(self) -> str:
        return str(self.path) if self.path is not None else f"in {ENV_VARIABLE}"

    def _missing_key_hint(self) -> str:
        if self.path is None:
            return f"add the missing key to {ENV_VARIABLE} (keep every key that still seals data)"
        return (
            f"restore the keyring that sealed this data from your backup to {self.path} "
            "(or point vault.keyring_path at it)"
        )

    # --- changes (file-backed keyrings only) -------------------------------------------------

    def _require_file(self, action: str) -> Path:
        if self.path is None:
            raise KeyringError(
                f"cannot {action}: the keys come from {ENV_VARIABLE}, which this process cannot edit",
                hint=f"edit {ENV_VARIABLE} yourself, or unset it to use a keyring file",
            )
        return self.path

    def add(self, key: VaultKey) -> None:
        """Add a key that can open values but does not yet seal new ones."""
        self._require_file("add a key")
        if key.id in self._keys:
            raise KeyringError(f"the keyring already has a key with id {key.id!r}")
        self._keys[key.id] = key
        register_secret(key.encoded())

    def discard(self, key_id: str) -> None:
        """Remove a key that never sealed anything (a rotation that rolled back)."""
        self._require_file("remove a key")
        if key_id == self._current_id:
            raise KeyringError(f"cannot remove {key_id!r}: it is the current key")
        self._keys.pop(key_id, None)

    def make_current(self, key_id: str) -> None:
        """Seal new values with this (active) key from now on."""
        self._require_file("change the current key")
        if self.get(key_id).status != "active":
            raise KeyringError(f"key {key_id!r} is retired and cannot become the current key")
        self._current_id = key_id

    def retire(self, key_id: str) -> None:
        """Stop using a key; the caller has checked that nothing is sealed with it."""
        self._require_file("retire a key")
        key = self.get(key_id)
        if key_id == self._current_id:
            raise KeyringError(
                f"key {key_id!r} is the current key and cannot be retired",
                hint="run `orchestrator keys rotate` first; it makes a new key current",
            )
        self._keys[key_id] = replace(key, status="retired")

    # --- persistence --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The file's content, key material included (never log this)."""
        return {
            "format": KEYRING_FORMAT,
            "current": self._current_id,
            "keys": [
                {
                    "id": key.id,
                    "created_at": key.created_at.isoformat(),
                    "status": key.status,
                    "key": key.encoded(),
                }
                for key in self.all_keys()
            ],
        }

    def save(self) -> None:
        """Write the keyring atomically with mode 0600."""
        path = self._require_file("save the keyring")
        _write_atomically(path, json.dumps(self.to_json(), indent=2).encode("utf-8") + b"\n")
        self._signature = _file_signature(path)

    def refresh(self) -> bool:
        """Reload from the file if another process rewrote it; True when something changed."""
        if self.path is None:
            return False
        try:
            signature = _file_signature(self.path)
        except OSError:
            return False
        if signature == self._signature:
            return False
        fresh = read_keyring_file(self.path)
        changed = fresh._current_id != self._current_id or fresh._keys != self._keys
        self._keys, self._current_id, self._signature = fresh._keys, fresh._current_id, fresh._signature
        return changed


def _file_signature(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _write_atomically(path: Path, content: bytes) -> None:
    """Temp file beside the target (same filesystem), fsync, rename over it, fsync the directory."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # the umask can only remove bits; this pins the mode exactly
        with os.fdopen(descriptor, "wb", closefd=False) as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def _corrupt(path: Path, problem: str) -> KeyringError:
    return KeyringError(
        f"the keyring {path} is corrupt: {problem}",
        hint=(
            "restore keyring.json from your backup (the stored secrets cannot be decrypted "
            "without the original keys); do not delete it"
        ),
    )


def check_permissions(path: Path) -> None:
    """Refuse a keyring that users other than its owner could read or change."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as err:
        raise KeyringError(f"cannot inspect the keyring {path}: {err.strerror}") from err
    if mode & 0o077:
        raise KeyringError(
            f"the keyring {path} has mode {mode:04o}: other users could read or change the keys "
            "that protect every stored secret",
            hint=f"chmod 600 {path}",
        )


def read_keyring_file(path: Path) -> Keyring:
    """Load and validate a keyring file, refusing unsafe permissions and malformed content."""
    check_permissions(path)
    try:
        raw = path.read_bytes()
    except PermissionError as err:
        raise KeyringError(
            f"cannot read the keyring {path}: permission denied",
            hint="run as the user that owns the file",
        ) from err
    except OSError as err:
        raise KeyringError(f"cannot read the keyring {path}: {err.strerror}") from err
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(path, f"not valid JSON ({type(err).__name__} at byte {_position(err)})") from None
    if not isinstance(document, dict):
        raise _corrupt(path, "the top level is not an object")
    if document.get("format") != KEYRING_FORMAT:
        raise _corrupt(path, f"unsupported format {document.get('format')!r} (expected {KEYRING_FORMAT})")
    entries = document.get("keys")
    if not isinstance(entries, list) or not entries:
        raise _corrupt(path, '"keys" must be a non-empty list')
    keys: dict[str, VaultKey] = {}
    for index, entry in enumerate(entries):
        key = _parse_entry(path, index, entry)
        if key.id in keys:
            raise _corrupt(path, f"key id {key.id!r} appears twice")
        keys[key.id] = key
    current = document.get("current")
    if not isinstance(current, str) or current not in keys:
        raise _corrupt(path, f'"current" ({current!r}) does not name a key in the file')
    if keys[current].status != "active":
        raise _corrupt(path, f"the current key {current!r} is retired")
    keyring = Keyring(keys=keys, current_id=current, path=path)
    keyring._signature = _file_signature(path)
    return keyring


def _position(err: Exception) -> object:
    return getattr(err, "pos", getattr(err, "start", "?"))


def _parse_entry(path: Path, index: int, entry: object) -> VaultKey:
    if not isinstance(entry, dict):
        raise _corrupt(path, f"keys[{index}] is not an object")
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not is_valid_key_id(key_id):
        raise _corrupt(path, f"keys[{index}] has an invalid id")
    status = entry.get("status")
    if status not in _STATUSES:
        raise _corrupt(path, f"key {key_id!r} has status {status!r}; expected active or retired")
    try:
        created_at = datetime.fromisoformat(str(entry.get("created_at")))
    except ValueError:
        raise _corrupt(path, f"key {key_id!r} has an unreadable created_at") from None
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    material = _decode_material(entry.get("key"))
    if material is None:
        raise _corrupt(path, f"key {key_id!r} is not base64 of exactly {KEY_SIZE} bytes")
    return VaultKey(id=key_id, created_at=created_at, status=status, material=material)


def _decode_material(encoded: object) -> bytes | None:
    if not isinstance(encoded, str):
        return None
    try:
        material = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return material if len(material) == KEY_SIZE else None


def parse_env_keys(value: str) -> Keyring:
    """Build a keyring from `<id>:<base64>,<id>:<base64>`; the first key is current."""
    keys: dict[str, VaultKey] = {}
    order: list[str] = []
    entries = [part.strip() for part in value.split(",") if part.strip()]
    if not entries:
        raise KeyringError(
            f"{ENV_VARIABLE} is set but empty",
            hint=f"unset it to use the keyring file, or set it to <key id>:<base64 of {KEY_SIZE} bytes>",
        )
    created_at = datetime.fromtimestamp(0, UTC)
    for position, entry in enumerate(entries, start=1):
        key_id, separator, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not separator or not is_valid_key_id(key_id):
            raise KeyringError(
                f"entry {position} of {ENV_VARIABLE} is not <key id>:<base64 key>",
                hint="key ids are 1-64 characters of A-Z a-z 0-9 . _ - ; entries are comma-separated",
            )
        material = _decode_material(encoded)
        if material is None:
            raise KeyringError(
                f"the key {key_id!r} in {ENV_VARIABLE} is not base64 of exactly {KEY_SIZE} bytes",
                hint="generate one with `orchestrator keys rotate --print-new-key`",
            )
        if key_id in keys:
            raise KeyringError(f"key id {key_id!r} appears twice in {ENV_VARIABLE}")
        keys[key_id] = VaultKey(id=key_id, created_at=created_at, status="active", material=material)
        order.append(key_id)
    return Keyring(keys=keys, current_id=order[0])


def create_keyring(path: Path) -> Keyring:
    """Create a keyring file with one fresh key; refuses to overwrite an existing file."""
    key = generate_key()
    keyring = Keyring(keys={key.id: key}, current_id=key.id, path=path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    content = json.dumps(keyring.to_json(), indent=2).encode("utf-8") + b"\n"
    try:
        # O_EXCL: two processes starting at once cannot both create (and one overwrite) the file.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyringError(
            f"a keyring already exists at {path}",
            hint="keep it; it holds the keys that decrypt your stored secrets",
        ) from None
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "wb", closefd=False) as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.close(descriptor)
        path.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    keyring._signature = _file_signature(path)
    log.warning(
        "vault.keyring_created",
        path=str(path),
        key_id=key.id,
        advice="back this file up somewhere safe and separate from the database backups: "
        "without it the stored secrets cannot be decrypted",
    )
    return keyring


def load_keyring(*, path: Path, env_keys: str | None = None, create: bool = False) -> Keyring:
    """The keyring in use: from `env_keys` when given, else the file (created if `create`)."""
    if env_keys is not None:
        return parse_env_keys(env_keys)
    if not path.exists():
        if path.is_symlink():
            raise KeyringError(f"the keyring {path} is a dangling symbolic link")
        if not create:
            raise KeyringError(
                f"there is no keyring at {path}",
                hint=(
                    "restore it from your backup if secrets were stored before; on a new "
                    "installation create one with `orchestrator keys init`"
                ),
            )
        with contextlib.suppress(KeyringError):
            return create_keyring(path)
        # Another process created it between the check and the create; use theirs.
    return read_keyring_file(path)


@contextlib.contextmanager
def keyring_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two `orchestrator keys` commands never change the keyring at once."""
    import fcntl

    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeyringError(
                f"another process is changing the keyring {path}",
                hint="wait for the other `orchestrator keys` command to finish, then try again",
            ) from None
        yield
    finally:
        os.close(descriptor)
