"""The `orchestrator` command line; each subcommand lives in its own module, imported on use.

Lazy loading keeps `orchestrator --help` and the daemon's start-up from importing every
integration. A subcommand module registers itself by adding one line to `SUBCOMMANDS`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from bot import __version__
from bot.errors import OrchestratorError

# name -> (module:attribute, one-line help shown in `orchestrator --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bot.cli.run_cmd:run", "Run the daemon in the foreground."),
    "worker": ("bot.cli.run_cmd:worker", "Run an engine-only worker beside a daemon (same database)."),
    "migrate": ("bot.cli.db_cmd:migrate", "Upgrade the database to the newest schema (backs up first)."),
    "db": ("bot.cli.db_cmd:db", "Inspect or downgrade the database schema."),
    "config": ("bot.cli.config_cmd:config", "Show the effective configuration."),
    "keys": ("bot.cli.keys_cmd:keys", "Manage the vault's encryption keys."),
    "tokens": ("bot.cli.tokens_cmd:tokens", "Create, list and revoke admin API tokens."),
    "doctor": ("bot.cli.doctor_cmd:doctor", "Check the set-up and say what is wrong and how to fix it."),
    "models": ("bot.cli.models_cmd:models", "List, load, unload, download and recommend models."),
    "providers": ("bot.cli.providers_cmd:providers", "Add, list and test LLM servers."),
    "task": ("bot.cli.task_cmd:task", "Create, show, list and cancel tasks."),
    "ranking": ("bot.cli.task_cmd:ranking", "Rank models by their measured quality."),
    "workers": ("bot.cli.task_cmd:workers", "List the engine's workers and whether they are alive."),
    "chat": ("bot.cli.chat_cmd:chat", "Talk to the orchestrator in this terminal."),
    "discord": ("bot.cli.discord_cmd:discord", "Sync Discord slash commands."),
    "kb": ("bot.cli.knowledge_cmd:kb", "Synchronise knowledge sources."),
    "accounts": ("bot.cli.accounts_cmd:accounts", "Read external API accounts' credits from their services."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target[0].split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target[0]} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="orchestrator")
def cli() -> None:
    """Self-hosted AI orchestrator: local models plan, execute and check each other's work.

    Settings come from orchestrator.toml and ORCH_* environment variables;
    see `orchestrator config show`.
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures print a message and a hint, exit status 2, no traceback."""
    try:
        cli.main(args=argv, prog_name="orchestrator", standalone_mode=False)
    except OrchestratorError as err:  # expected: the user can act on the message
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)


def echo_json(value: Any) -> None:
    """Print one JSON document on stdout (the --json output of every command)."""
    import json

    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))
