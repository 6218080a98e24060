"""Key rotation and retirement across every encrypted column, in one database transaction.

Crash ordering for a file keyring (each step durable before the next starts):

1. the new key is added to the keyring file as active but not current;
2. every secret is opened and re-sealed with the new key in ONE transaction, which commits;
3. the keyring file is rewritten with the new key current.

A crash before 2 commits leaves the database untouched and an unused extra key; a crash between
2 and 3 leaves rows sealed with a key the file already holds (the old key stays current and both
open everything). No ordering loses a secret. If any row fails to open, the transaction rolls
back, the unused key is removed again, and the error names the row.

With keys from ORCH_VAULT__KEYS this process cannot write the key list, so a rotation never
invents a key: you put a new key first in the variable (`orchestrator keys rotate
--print-new-key` makes one), and rotation re-seals every value under that current key.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Table, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.logs import get_logger
from bot.vault import blob
from bot.vault.errors import IntegrityError, KeyringError, UnknownKeyError, VaultError
from bot.vault.keyring import Keyring, VaultKey, generate_key, keyring_lock
from bot.vault.vault import Vault

log = get_logger(__name__)
UNREADABLE = "(unreadable)"


@dataclass(frozen=True, slots=True)
class SecretColumn:
    """One encrypted column: the table it lives in and the primary key that binds its blobs."""

    table: Table
    column: str
    primary_key: Column[Any]

    @property
    def label(self) -> str:
        """`table.column`, as shown in reports and errors."""
        return f"{self.table.name}.{self.column}"


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What a rotation did: which key now seals everything, and how many values moved to it."""

    new_key_id: str
    previous_key_id: str
    resealed: dict[str, int] = field(default_factory=dict)
    retired: tuple[str, ...] = ()
    created_key: bool = True

    @property
    def total(self) -> int:
        """How many values were re-sealed."""
        return sum(self.resealed.values())


def secret_columns() -> list[SecretColumn]:
    """Every column declared in a model's `__secret_columns__`, found through the mapper registry."""
    import bot.db.models  # noqa: F401  (importing registers every model with Base)
    from bot.db.base import Base

    found: list[SecretColumn] = []
    for mapper in Base.registry.mappers:
        model = mapper.class_
        names: tuple[str, ...] = getattr(model, "__secret_columns__", ())
        if not names:
            continue
        table = mapper.local_table
        if not isinstance(table, Table):
            raise VaultError(f"{model.__name__} declares secret columns but is not mapped to a table")
        primary = list(table.primary_key.columns)
        if len(primary) != 1:
            raise VaultError(
                f"{table.name} declares secret columns but has a composite primary key; "
                "the vault binds each value to a single row id"
            )
        for name in names:
            if name not in table.c:
                raise VaultError(f"{model.__name__}.__secret_columns__ names {name!r}, not a column")
            found.append(SecretColumn(table=table, column=name, primary_key=primary[0]))
    return sorted(found, key=lambda item: item.label)


async def _read_blobs(
    connection: AsyncConnection, target: SecretColumn, *, lock: bool = False
) -> list[tuple[Any, bytes]]:
    column = target.table.c[target.column]
    query = select(target.primary_key, column).where(column.is_not(None)).order_by(target.primary_key)
    if lock:
        query = query.with_for_update()
    rows = (await connection.execute(query)).all()
    return [(row[0], bytes(row[1])) for row in rows]


async def count_blobs_by_key(engine: AsyncEngine) -> dict[str, int]:
    """How many stored values each key id seals (`(unreadable)` for values with no valid header)."""
    counts: Counter[str] = Counter()
    async with engine.connect() as connection:
        for target in secret_columns():
            for _row_id, sealed in await _read_blobs(connection, target):
                try:
                    counts[blob.parse(sealed).key_id] += 1
                except blob.BlobFormatError:
                    counts[UNREADABLE] += 1
    return dict(counts)


async def _reseal_all(connection: AsyncConnection, *, vault: Vault, key: VaultKey) -> dict[str, int]:
    resealed: dict[str, int] = {}
    for target in secret_columns():
        column = target.table.c[target.column]
        count = 0
        for row_id, sealed in await _read_blobs(connection, target, lock=True):
            where = {"table": target.table.name, "column": target.column, "row_id": row_id}
            plaintext = vault.open_unregistered(sealed, **where)
            fresh = vault.seal_with(key, plaintext, **where)
            # Compare-and-swap: a value changed by another writer since we read it is not
            # overwritten with a stale copy; the whole rotation rolls back instead.
            result = await connection.execute(
                update(target.table)
                .where(target.primary_key == row_id, column == sealed)
                .values({target.column: fresh})
            )
            if result.rowcount != 1:
                raise IntegrityError(
                    f"{target.label} of row {row_id} changed while it was being re-encrypted",
                    hint="run `orchestrator keys rotate` again",
                )
            count += 1
        resealed[target.label] = count
    return resealed


async def rotate_keys(*, engine: AsyncEngine, keyring: Keyring, retire_old: bool = False) -> RotationReport:
    """Seal every stored secret with a fresh current key (file keyring) or the current env key."""
    if keyring.source == "environment":
        return await _rotate_to_current(engine=engine, keyring=keyring)
    assert keyring.path is not None
    with keyring_lock(keyring.path):
        keyring.refresh()
        previous = keyring.current_id
        new_key = generate_key(existing={key.id for key in keyring.all_keys()})
        keyring.add(new_key)
        keyring.save()  # step 1: durable before any row is sealed with it
        vault = Vault(keyring=keyring)
        committing = False
        try:
            async with engine.connect() as connection:
                transaction = await connection.begin()
                try:
                    resealed = await _reseal_all(connection, vault=vault, key=new_key)
                except BaseException:
                    await transaction.rollback()
                    raise
                committing = True
                await transaction.commit()  # step 2
        except BaseException as err:
            if committing:
                # The commit's outcome is unknown: keep the new key, rows may be sealed with it.
                raise
            _forget_unused_key(keyring, new_key.id)
            if isinstance(err, VaultError):
                raise type(err)(
                    f"key rotation aborted and rolled back, nothing was changed: {err.message}",
                    hint=err.hint,
                ) from err
            raise
        keyring.make_current(new_key.id)
        keyring.save()  # step 3
        log.info("vault.rotated", new_key_id=new_key.id, previous_key_id=previous, resealed=resealed)
        retired = await _retire_unused(engine=engine, keyring=keyring) if retire_old else ()
        return RotationReport(new_key_id=new_key.id, previous_key_id=previous, resealed=resealed, retired=retired)


def _forget_unused_key(keyring: Keyring, key_id: str) -> None:
    try:
        keyring.discard(key_id)
        keyring.save()
    except (OSError, KeyringError) as err:  # expected and harmless: an unused key stays behind
        log.warning("vault.unused_key_kept", key_id=key_id, error=str(err))


async def _rotate_to_current(*, engine: AsyncEngine, keyring: Keyring) -> RotationReport:
    """Environment keys: re-seal everything under the first key of ORCH_VAULT__KEYS."""
    current = keyring.current
    vault = Vault(keyring=keyring)
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            resealed = await _reseal_all(connection, vault=vault, key=current)
        except VaultError as err:
            await transaction.rollback()
            raise type(err)(
                f"key rotation aborted and rolled back, nothing was changed: {err.message}",
                hint=err.hint,
            ) from err
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
    log.info("vault.resealed", key_id=current.id, resealed=resealed)
    return RotationReport(new_key_id=current.id, previous_key_id=current.id, resealed=resealed, created_key=False)


async def _retire_unused(*, engine: AsyncEngine, keyring: Keyring) -> tuple[str, ...]:
    counts = await count_blobs_by_key(engine)
    retired = []
    for key in keyring.all_keys():
        if key.id != keyring.current_id and key.status == "active" and counts.get(key.id, 0) == 0:
            keyring.retire(key.id)
            retired.append(key.id)
    if retired:
        keyring.save()
        log.info("vault.keys_retired", key_ids=retired)
    return tuple(retired)


async def retire_key(*, engine: AsyncEngine, keyring: Keyring, key_id: str) -> None:
    """Stop using a key, refusing while any stored value is still sealed with it."""
    if keyring.source == "environment":
        if key_id not in keyring:
            raise UnknownKeyError(f"ORCH_VAULT__KEYS has no key {key_id!r}")
        in_use = (await count_blobs_by_key(engine)).get(key_id, 0)
        if key_id == keyring.current_id or in_use:
            raise KeyringError(
                f"key {key_id!r} is still needed: it "
                + ("is the current key" if key_id == keyring.current_id else f"seals {in_use} value(s)"),
                hint="put a new key first in ORCH_VAULT__KEYS and run `orchestrator keys rotate`",
            )
        raise KeyringError(
            f"no stored value uses key {key_id!r}, but the keys come from ORCH_VAULT__KEYS",
            hint=f"remove the {key_id}:… entry from ORCH_VAULT__KEYS yourself",
        )
    assert keyring.path is not None
    with keyring_lock(keyring.path):
        keyring.refresh()
        key = keyring.get(key_id)
        if key.status == "retired":
            raise KeyringError(f"key {key_id!r} is already retired")
        if key_id == keyring.current_id:
            raise KeyringError(
                f"key {key_id!r} is the current key and cannot be retired",
                hint="run `orchestrator keys rotate` first; it makes a new key current",
            )
        in_use = (await count_blobs_by_key(engine)).get(key_id, 0)
        if in_use:
            raise KeyringError(
                f"key {key_id!r} still seals {in_use} stored value(s); retiring it would make them unreadable",
                hint="run `orchestrator keys rotate` to re-encrypt them with a new key first",
            )
        keyring.retire(key_id)
        keyring.save()
        log.info("vault.key_retired", key_id=key_id)
