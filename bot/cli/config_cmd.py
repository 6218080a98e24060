"""`orchestrator config …`: see what the daemon will run with."""

from __future__ import annotations

import click

from bot.cli import echo_json
from bot.settings import find_config_file, load_settings, redacted_dump


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML-like text.")
def show(as_json: bool) -> None:
    """Print the effective settings, secrets redacted, and which file they came from."""
    settings = load_settings()
    dumped = redacted_dump(settings)
    source = find_config_file()
    dumped["config_file"] = str(source) if source else None
    if as_json:
        echo_json(dumped)
        return
    click.echo(f"# config file: {source or 'none (defaults and environment)'}")
    sections = {k: v for k, v in dumped.items() if isinstance(v, dict)}
    for key, value in dumped.items():
        if not isinstance(value, dict):
            click.echo(f"{key} = {_fmt(value)}")
    for section, values in sections.items():
        click.echo(f"\n[{section}]")
        for key, value in values.items():
            click.echo(f"{key} = {_fmt(value)}")


def _fmt(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | dict):
        import json

        return json.dumps(value)
    return f'"{value}"'
