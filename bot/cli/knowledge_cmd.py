"""`orchestrator kb …`: synchronise knowledge sources from the command line.

The same code path as `POST /knowledge-sources/{id}/sync` and the daemon's scheduler: the sync
claims the source, so running it here while the daemon syncs the same source fails cleanly.
Embeddings are computed by the daemon (which holds the embedding provider); a sync from the CLI
stores chunks without them and the daemon's next sync of the source fills them in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from bot.cli import echo_json
from bot.errors import OrchestratorError
from bot.settings import load_settings


class KnowledgeCommandError(OrchestratorError):
    """A knowledge command cannot do what was asked."""


async def _sync(source_id: int) -> dict[str, Any]:
    from sqlalchemy.exc import DBAPIError

    from bot.db.engine import create_engine, session_factory
    from bot.knowledge import sync_source
    from bot.logs import configure_logging
    from bot.settings import redact_url

    settings = load_settings()
    configure_logging(level="ERROR", fmt=settings.log.format)  # the command reports problems itself
    engine = create_engine(settings.effective_database_url, settings=settings.database)
    try:
        report = await sync_source(session_factory(engine), source_id, settings=settings.knowledge)
    except DBAPIError as err:
        raise KnowledgeCommandError(
            f"cannot use the database {redact_url(settings.effective_database_url)}: {type(err.orig).__name__}",
            hint="run `orchestrator migrate` first, and check the database URL",
        ) from err
    finally:
        await engine.dispose()
    return {**report.__dict__, "synced_at": report.synced_at.isoformat()}


@click.group()
def kb() -> None:
    """Synchronise knowledge sources."""


@kb.command("sync")
@click.argument("source_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def sync(source_id: int, as_json: bool) -> None:
    """Fetch source SOURCE_ID and update its knowledge entries (all or nothing)."""
    report = asyncio.run(_sync(source_id))
    if as_json:
        echo_json(report)
        return
    click.echo(f"source {source_id}: {report['documents']} documents, {report['chunks']} chunks "
               f"(+{report['added']} ~{report['updated']} -{report['removed']}, {report['unchanged']} unchanged)")
