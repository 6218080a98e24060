"""Chat platforms behind one port: Slack, Discord and the console speak neutral events.

    events.py      the vocabulary (IncomingCommand, IncomingMessage, ReactionAdded, ButtonPress,
                   Conversation, MessageHandle, NativeStream, Card, StreamLimits)
    base.py        the Platform port and its reconnect-with-backoff loop
    streaming.py   StreamRenderer: streamed answers within each platform's limits
    slack.py / discord_platform.py / console.py   the three implementations
    alerts.py      monitor/engine alerts to each platform's alert channel
    i18n.py        English and Brazilian Portuguese

`platforms_from_settings` builds the platforms the settings configure (the composition root
starts them as components and mounts `handle_http` of Slack/Discord on the admin API).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.platforms.base import EventSink, Platform
from bot.platforms.events import Place

if TYPE_CHECKING:
    from bot.commands.registry import CommandRegistry
    from bot.platforms.alerts import AlertTarget
    from bot.settings import Settings


def platforms_from_settings(settings: Settings, *, sink: EventSink, registry: CommandRegistry) -> list[Platform]:
    """Slack when a bot token is set, Discord when a bot token is set; none is an empty list."""
    platforms: list[Platform] = []
    if settings.slack.bot_token is not None:
        from bot.platforms.slack import SlackPlatform

        platforms.append(SlackPlatform(settings=settings.slack, sink=sink))
    if settings.discord.bot_token is not None:
        from bot.platforms.discord_platform import DiscordPlatform

        platforms.append(DiscordPlatform(settings=settings.discord, sink=sink, registry=registry))
    return platforms


def alert_targets(settings: Settings, platforms: list[Platform]) -> list[AlertTarget]:
    """Each started platform's configured alert channel, in the workspace language."""
    from bot.platforms.alerts import AlertTarget

    targets = []
    for platform in platforms:
        channel = {"slack": settings.slack.alert_channel, "discord": settings.discord.alert_channel_id}.get(
            platform.name
        )
        if channel:
            targets.append(AlertTarget(platform, Place(platform.name, channel), settings.language))
    return targets


__all__ = ["EventSink", "Platform", "alert_targets", "platforms_from_settings"]
