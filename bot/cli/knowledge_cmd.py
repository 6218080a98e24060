"""`orchestrator kb …`: synchronise knowledge sources from the command line.

The same code path as `POST /knowledge-sources/{id}/sync` and the daemon's scheduler: the sync
claims the source, so running it here while the daemon syncs the same source fails cleanly.
Embeddings use `[knowledge] embedding_model`, built as the daemon builds it (bot/knowledge/
embedder.py); when it cannot be had (not configured, not installed, its provider down) the text is
still stored and the report says embeddings were skipped and why. A linked credential is opened
with the vault (the keyring in the data directory, or ORCH_VAULT__KEYS).
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


class _MissingVault:
    """Stands in for a vault whose keyring cannot be opened: only a source with a credential needs
    one, and that sync fails with the keyring's own message and hint."""

    def __init__(self, error: Any) -> None:
        self._error = error

    def open_text(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._error


def _vault(settings: Any) -> Any:
    from bot.vault import VaultError, open_vault

    try:
        return open_vault(settings, create=False)
    except VaultError as err:
        return _MissingVault(err)


async def _sync(source_id: int) -> dict[str, Any]:
    from sqlalchemy.exc import DBAPIError

    from bot.db.engine import create_engine, session_factory
    from bot.knowledge import sync_source
    from bot.knowledge.embedder import build_embedder
    from bot.logs import configure_logging
    from bot.settings import redact_url

    settings = load_settings()
    configure_logging(level="ERROR", fmt=settings.log.format)  # the command reports problems itself
    engine = create_engine(settings.effective_database_url, settings=settings.database)
    sessions = session_factory(engine)
    embedder = None
    try:
        choice = await build_embedder(settings, sessions)
        embedder = choice.embedder
        report = await sync_source(sessions, source_id, settings=settings.knowledge, embedder=embedder,
                                   vault=_vault(settings))
    except DBAPIError as err:
        raise KnowledgeCommandError(
            f"cannot use the database {redact_url(settings.effective_database_url)}: {type(err.orig).__name__}",
            hint="run `orchestrator migrate` first, and check the database URL",
        ) from err
    finally:
        if embedder is not None:
            await embedder.aclose()
        await engine.dispose()
    return {**report.__dict__, "synced_at": report.synced_at.isoformat(),
            "embedding_model": embedder.model if embedder is not None else None,
            "embeddings_skipped": choice.skipped}


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
    if report["embedding_model"] is not None:
        click.echo(f"embedded {report['embedded']} chunks with {report['embedding_model']}")
    else:
        click.echo(f"embeddings skipped: {report['embeddings_skipped']}")
