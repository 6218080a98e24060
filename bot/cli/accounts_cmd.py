"""`orchestrator accounts …`: read external API accounts' credits from their services.

Uses the vault to open the account's credential, so it runs where the keyring is (the daemon's
data directory, or ORCH_VAULT__KEYS). Supported services: see bot/integrations/credits.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from bot.cli import echo_json
from bot.errors import OrchestratorError
from bot.settings import load_settings


class AccountCommandError(OrchestratorError):
    """An account command cannot do what was asked."""


async def _sync(account_id: int) -> dict[str, Any]:
    from sqlalchemy.exc import DBAPIError

    from bot.db.engine import create_engine, session_factory
    from bot.integrations.credits import sync_account_credits
    from bot.logs import configure_logging
    from bot.settings import redact_url
    from bot.vault import open_vault

    settings = load_settings()
    configure_logging(level="ERROR", fmt=settings.log.format)  # the command reports problems itself
    vault = open_vault(settings, create=False)
    engine = create_engine(settings.effective_database_url, settings=settings.database)
    try:
        reading = await sync_account_credits(session_factory(engine), account_id, vault=vault,
                                             settings=settings.credits)
    except DBAPIError as err:
        raise AccountCommandError(
            f"cannot use the database {redact_url(settings.effective_database_url)}: {type(err.orig).__name__}",
            hint="run `orchestrator migrate` first, and check the database URL",
        ) from err
    finally:
        await engine.dispose()
    return {"account_id": account_id, "service": reading.service, "currency": reading.currency,
            "balance": None if reading.balance is None else str(reading.balance),
            "used": None if reading.used is None else str(reading.used),
            "period_start": reading.period_start.isoformat() if reading.period_start else None}


@click.group()
def accounts() -> None:
    """External API accounts."""


@accounts.command("sync-credits")
@click.argument("account_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--json", "as_json", is_flag=True, help="Print the reading as JSON.")
def sync_credits(account_id: int, as_json: bool) -> None:
    """Read account ACCOUNT_ID's balance and spend from its service and store them."""
    reading = asyncio.run(_sync(account_id))
    if as_json:
        echo_json(reading)
        return
    balance = reading["balance"] if reading["balance"] is not None else "not published"
    since = f" since {reading['period_start']}" if reading["period_start"] else ""
    click.echo(f"account {account_id} ({reading['service']}): balance {balance} {reading['currency']}, "
               f"used {reading['used']} {reading['currency']}{since}")
