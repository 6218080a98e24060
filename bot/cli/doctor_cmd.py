"""`orchestrator doctor`."""

from __future__ import annotations

import asyncio
import sys

import click

from bot.cli import echo_json

_MARK = {"ok": "✔", "warn": "!", "fail": "✘"}


@click.command()
@click.option("--json", "as_json_output", is_flag=True, help="Print a JSON report.")
def doctor(as_json_output: bool) -> None:
    """Check config, data dir, database, schema, keyring, LLM servers and chat tokens.

    Exits 1 when any check fails; every failure says how to fix it.
    """
    from bot.doctor import as_json, run_checks

    results = asyncio.run(run_checks())
    report = as_json(results)
    if as_json_output:
        echo_json(report)
    else:
        for result in results:
            click.echo(f"{_MARK[result.status]} {result.name}: {result.detail}")
            if result.fix and result.status != "ok":
                click.echo(f"    fix: {result.fix}")
    if not report["ok"]:
        sys.exit(1)
