"""Chat commands: one registry, a permission check and an audit row per command, one error boundary.

`build_registry()` returns every command that works without the orchestration engine, plus
/workflows and /connect (whose `run` and OAuth parts use the engine, bus and vault the app puts in
`Services.components`, and say so when they are absent). The engine's own commands (/task, /ask,
/tasks) are added through `build_registry(extensions=…)` by the code that owns the engine, with
`registry.add` — nothing here pretends they exist.

    registry = build_registry()
    dispatcher = CommandDispatcher(registry=registry, services=Services(session_factory=...))
    await dispatcher.handle_event(event, conversation)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bot.commands.dispatcher import CommandDispatcher, DispatchResult, Services
from bot.commands.errors import CommandError, NotFoundError, PermissionDeniedError, UsageError
from bot.commands.permissions import PermissionPolicy
from bot.commands.registry import CommandContext, CommandRegistry, CommandSpec, Param, Principal


def build_registry(*, extensions: Iterable[Callable[[CommandRegistry], None]] = ()) -> CommandRegistry:
    """Every command backed by the database and the provider layer, plus what `extensions` add.

    An extension is a function that registers more commands, e.g. the engine's
    `lambda registry: register_engine_commands(registry, engine, bus, threads)` adding /task,
    /ask and /tasks; use the same extensions for the dispatcher and for
    `orchestrator discord sync`, so Discord knows every command the daemon answers.
    """
    from bot.commands import catalog, connect, general, knowledge, models, operations, workflows

    registry = CommandRegistry()
    general.register(registry)
    catalog.register(registry)
    knowledge.register(registry)
    operations.register(registry)
    models.register(registry)
    workflows.register(registry)
    connect.register(registry)
    for extend in extensions:
        extend(registry)
    return registry


__all__ = [
    "CommandContext",
    "CommandDispatcher",
    "CommandError",
    "CommandRegistry",
    "CommandSpec",
    "DispatchResult",
    "NotFoundError",
    "Param",
    "PermissionDeniedError",
    "PermissionPolicy",
    "Principal",
    "Services",
    "UsageError",
    "build_registry",
]
