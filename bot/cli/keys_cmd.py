"""`orchestrator keys …`: create, list, rotate and retire the vault's encryption keys.

Key material is never printed, except the one new key that `rotate --print-new-key` writes to
stdout (and nowhere else) for people who keep their keys in ORCH_VAULT__KEYS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from bot.cli import echo_json
from bot.settings import Settings, load_settings

T = TypeVar("T")


def _settings() -> Settings:
    from bot.logs import configure_logging

    settings = load_settings()
    # Logs go to stderr, so stdout carries only the command's output (and a printed key).
    configure_logging(level=settings.log.level, fmt=settings.log.format)
    return settings


def _with_engine(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(engine)` on the configured database, turning driver errors into a clear message."""
    from sqlalchemy.exc import DBAPIError

    from bot.db.engine import create_engine, is_sqlite, parse_url
    from bot.db.errors import DatabaseError
    from bot.settings import redact_url

    url = settings.effective_database_url
    if is_sqlite(url):
        database = parse_url(url).database
        if database and database != ":memory:" and not Path(database).expanduser().exists():
            raise DatabaseError(
                f"there is no database at {database}",
                hint="run `orchestrator migrate` to create it, or set database_url",
            )

    async def run() -> T:
        engine = create_engine(url, settings=settings.database)
        try:
            return await work(engine)
        except DBAPIError as err:
            raise DatabaseError(
                f"the database {redact_url(url)} could not be read or written: {err.orig}",
                hint="check that it is reachable and migrated (`orchestrator migrate`)",
            ) from err
        finally:
            await engine.dispose()

    return asyncio.run(run())


@click.group()
def keys() -> None:
    """Manage the keys that encrypt stored secrets (credentials, OAuth state)."""


@keys.command("init")
def init() -> None:
    """Create the keyring file with a first key (mode 0600)."""
    from bot.vault.errors import KeyringError
    from bot.vault.keyring import create_keyring

    settings = _settings()
    if settings.vault.keys is not None:
        raise KeyringError(
            "the keys come from ORCH_VAULT__KEYS, so no keyring file is used",
            hint="unset ORCH_VAULT__KEYS to keep the keys in a file instead",
        )
    keyring = create_keyring(settings.keyring_path)
    click.echo(f"created {keyring.path} (mode 0600) with key {keyring.current_id}")
    click.echo(
        "back this file up now, separately from database backups: without it the stored secrets cannot be decrypted"
    )


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_keys(as_json: bool) -> None:
    """Show each key's id, status, creation time and how many stored values it seals."""
    from bot.vault import keyring_from_settings
    from bot.vault.rotation import count_blobs_by_key

    settings = _settings()
    keyring = keyring_from_settings(settings)
    counts = _with_engine(settings, count_blobs_by_key)
    rows: list[dict[str, Any]] = [
        {
            "id": key.id,
            "status": "current" if key.id == keyring.current_id else key.status,
            "created_at": key.created_at.isoformat() if keyring.source == "file" else None,
            "values": counts.pop(key.id, 0),
        }
        for key in keyring.all_keys()
    ]
    rows.extend(
        {"id": key_id, "status": "missing", "created_at": None, "values": count}
        for key_id, count in sorted(counts.items())
    )
    if as_json:
        echo_json({"source": keyring.source, "path": str(keyring.path or ""), "keys": rows})
        return
    click.echo(f"keys from: {keyring.path or 'ORCH_VAULT__KEYS'}")
    click.echo(f"{'ID':<24} {'STATUS':<9} {'CREATED':<26} VALUES")
    for row in rows:
        created = row["created_at"] or "-"
        click.echo(f"{row['id']:<24} {row['status']:<9} {created:<26} {row['values']}")
    if any(row["status"] == "missing" for row in rows):
        click.echo(
            "warning: some stored values are sealed with keys this keyring does not hold; "
            "restore the keyring that has them from your backup",
            err=True,
        )


@keys.command("rotate")
@click.option("--retire-old", is_flag=True, help="Retire the keys that no longer seal anything.")
@click.option(
    "--print-new-key",
    is_flag=True,
    help="With ORCH_VAULT__KEYS: generate a key and print it on stdout (nothing else changes).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def rotate(retire_old: bool, print_new_key: bool, as_json: bool) -> None:
    """Seal every stored secret with a new key, in one transaction; old keys still open until retired.

    With ORCH_VAULT__KEYS, first run with --print-new-key, put the printed key first in the
    variable (keep the old ones after it), then run without the flag to re-encrypt.
    """
    from bot.vault import keyring_from_settings
    from bot.vault.errors import KeyringError
    from bot.vault.keyring import generate_key
    from bot.vault.rotation import count_blobs_by_key, rotate_keys

    settings = _settings()
    keyring = keyring_from_settings(settings)
    if print_new_key:
        if keyring.source == "file":
            raise KeyringError(
                f"--print-new-key is for keys kept in ORCH_VAULT__KEYS; these are in {keyring.path}",
                hint="run `orchestrator keys rotate` without it; the new key goes into the file",
            )
        key = generate_key(existing={key.id for key in keyring.all_keys()})
        click.echo(f"{key.id}:{key.encoded()}")
        click.echo(
            "put this entry FIRST in ORCH_VAULT__KEYS, keep the existing entries after it, "
            "restart the daemon, then run `orchestrator keys rotate` to re-encrypt",
            err=True,
        )
        return

    async def work(engine: Any) -> tuple[Any, dict[str, int]]:
        report = await rotate_keys(engine=engine, keyring=keyring, retire_old=retire_old)
        return report, await count_blobs_by_key(engine)

    report, counts = _with_engine(settings, work)
    if as_json:
        echo_json(
            {
                "new_key_id": report.new_key_id,
                "previous_key_id": report.previous_key_id,
                "created_key": report.created_key,
                "resealed": report.resealed,
                "total": report.total,
                "retired": list(report.retired),
            }
        )
    else:
        click.echo(f"re-encrypted {report.total} value(s) with key {report.new_key_id}")
        for label, count in sorted(report.resealed.items()):
            click.echo(f"  {label}: {count}")
        if report.retired:
            click.echo(f"retired: {', '.join(report.retired)}")
    if keyring.source == "environment":
        unused = [k.id for k in keyring.all_keys() if k.id != keyring.current_id and not counts.get(k.id)]
        if unused:
            click.echo(
                f"no stored value uses {', '.join(unused)} any more; you may remove them from ORCH_VAULT__KEYS",
                err=True,
            )
        if len(keyring.all_keys()) == 1:
            click.echo(
                "ORCH_VAULT__KEYS holds one key, so the values were re-sealed with the same key; "
                "to move to a fresh key run `orchestrator keys rotate --print-new-key` first",
                err=True,
            )
    elif not as_json:
        click.echo(f"back up {keyring.path} again: it now holds the new key", err=True)


@keys.command("retire")
@click.argument("key_id")
def retire(key_id: str) -> None:
    """Stop using KEY_ID; refused while any stored value is still sealed with it."""
    from bot.vault import keyring_from_settings
    from bot.vault.rotation import retire_key

    settings = _settings()
    keyring = keyring_from_settings(settings)

    async def work(engine: Any) -> None:
        await retire_key(engine=engine, keyring=keyring, key_id=key_id)

    _with_engine(settings, work)
    click.echo(f"retired {key_id}; it no longer opens stored values")
