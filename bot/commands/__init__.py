"""Chat commands: one registry, a permission check and an audit row per command, one error boundary.

`build_registry()` returns every command that works without the orchestration engine. The engine's
commands (/task, /ask, /workflows execute, /connect) are added by the composition root once the
engine exists, with the same decorator/`registry.add`, through `register_engine_commands` in the
engine's own package — the registry is open for that and nothing here pretends they exist.

    registry = build_registry()
    dispatcher = CommandDispatcher(registry=registry, services=Services(session_factory=...))
    await dispatcher.handle_event(event, conversation)
"""

from __future__ import annotations

from bot.commands.dispatcher import CommandDispatcher, DispatchResult, Services
from bot.commands.errors import CommandError, NotFoundError, PermissionDeniedError, UsageError
from bot.commands.permissions import PermissionPolicy
from bot.commands.registry import CommandContext, CommandRegistry, CommandSpec, Param, Principal


def build_registry() -> CommandRegistry:
    """Every command that is backed by the database and the provider layer alone."""
    from bot.commands import catalog, general, knowledge, models, operations

    registry = CommandRegistry()
    general.register(registry)
    catalog.register(registry)
    knowledge.register(registry)
    operations.register(registry)
    models.register(registry)
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
