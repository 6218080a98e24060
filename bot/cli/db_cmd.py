"""`orchestrator migrate` and `orchestrator db …`: keep the database schema in step with the code.

Every command reads the database URL from the settings (SQLite under the data directory by
default); backups go to `<data dir>/backups/`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from bot.cli import echo_json
from bot.settings import Settings, load_settings, redact_url


def _backup_dir(settings: Settings) -> Path:
    return settings.data_dir / "backups"


def _print_report(report: dict[str, Any]) -> None:
    click.echo(f"database: {report['database']} ({report['server_version']})")
    if report["applied"]:
        before = report["from_revision"] or "empty"
        click.echo(f"schema:   {before} → {report['to_revision']} (applied {', '.join(report['applied'])})")
    else:
        click.echo(f"schema:   {report['to_revision']} (already the newest, nothing applied)")
    click.echo(f"backup:   {report['backup_path'] or report['backup_note']}")
    seeded = {table: count for table, count in report.get("seeded", {}).items() if count}
    if seeded:
        click.echo("initial data added: " + ", ".join(f"{table} {count}" for table, count in seeded.items()))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-backup", is_flag=True, help="Do not back the database up before changing it.")
def migrate(as_json: bool, no_backup: bool) -> None:
    """Upgrade the database to the newest schema and add missing initial data.

    Backs the database up first (into <data dir>/backups/) when it holds anything. Running it
    again when already up to date changes nothing.
    """
    from bot.db.migrate import upgrade_to_head

    settings = load_settings()
    report = asyncio.run(
        upgrade_to_head(
            settings.effective_database_url,
            backup_dir=None if no_backup else _backup_dir(settings),
            settings=settings,
        )
    ).as_dict()
    if as_json:
        echo_json(report)
        return
    _print_report(report)


@click.group()
def db() -> None:
    """Inspect the database schema, check it, or take it back to an older revision."""


@db.command("current")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def current(as_json: bool) -> None:
    """Show the database's schema revision and the newest one this version knows."""
    from bot.db.migrate import current_revision, head_revision, history

    settings = load_settings()
    url = settings.effective_database_url
    revision = asyncio.run(current_revision(url, settings=settings))
    head = head_revision()
    known = {entry["revision"] for entry in history()}
    if revision is None:
        state = "empty (never migrated): run `orchestrator migrate`"
    elif revision == head:
        state = "up to date"
    elif revision in known:
        state = "older than this version: run `orchestrator migrate`"
    else:
        state = "NEWER than this version: upgrade the orchestrator"
    if as_json:
        echo_json({"database": redact_url(url), "revision": revision, "head": head, "state": state})
        return
    click.echo(f"database: {redact_url(url)}")
    click.echo(f"revision: {revision or '(none)'}")
    click.echo(f"newest:   {head}")
    click.echo(f"state:    {state}")


@db.command("history")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history_cmd(as_json: bool) -> None:
    """List the schema revisions this version ships, newest first."""
    from bot.db.migrate import history

    entries = history()
    if as_json:
        echo_json(entries)
        return
    for entry in entries:
        click.echo(f"{entry['revision']}  (after {entry['down_revision'] or 'base'})  {entry['message']}")


@db.command("check")
def check() -> None:
    """Exit 0 when the schema is exactly what this version needs; otherwise say why and exit 2."""
    from bot.db.migrate import check_at_head

    settings = load_settings()
    revision = asyncio.run(check_at_head(settings.effective_database_url, settings=settings))
    click.echo(f"ok: the database schema is at {revision}, the newest revision")


@db.command("downgrade")
@click.argument("revision")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def downgrade_cmd(revision: str, yes: bool, as_json: bool) -> None:
    """Take the schema back to REVISION (`base` drops every table), after a backup.

    Data in tables or columns that the older revision lacks is lost from the live database;
    the backup written first keeps it.
    """
    from bot.db.migrate import downgrade

    settings = load_settings()
    url = settings.effective_database_url
    if not yes:
        click.confirm(
            f"Downgrade {redact_url(url)} to {revision}? Data the older schema cannot hold will be "
            "dropped (a backup is written first)",
            abort=True,
        )
    report = asyncio.run(downgrade(url, revision, backup_dir=_backup_dir(settings), settings=settings)).as_dict()
    if as_json:
        echo_json(report)
        return
    click.echo(f"database: {report['database']}")
    click.echo(f"schema:   {report['from_revision']} → {report['to_revision'] or 'base (no tables)'}")
    click.echo(f"backup:   {report['backup_path'] or report['backup_note']}")
