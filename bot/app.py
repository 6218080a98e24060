"""The composition root: builds every component from the settings and runs them as one daemon.

Components start in order and stop in reverse. A component that fails to start stops the ones
already started and the daemon exits with the error. SIGTERM/SIGINT begin a drain bounded by
`shutdown_timeout_s`; a component that does not stop in its share of that time is abandoned with
a log line, so the process always exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot import __version__
from bot.logs import get_logger, register_secret
from bot.settings import Settings, redact_url
from bot.systemd import notify, watchdog_interval_s

log = get_logger("bot.app")


class Component(Protocol):
    """Something the daemon runs: started once, stopped once, in order."""

    name: str

    async def start(self) -> None:
        """Acquire resources and begin work; return once ready."""
        ...

    async def stop(self) -> None:
        """Release resources; must be safe after a partial start."""
        ...


@dataclass
class Runtime:
    """What components share: settings, the database, the event bus, and a health registry."""

    settings: Settings
    engine: Any = None
    session_factory: Any = None
    bus: Any = None
    health_checks: dict[str, Callable[[], Awaitable[bool]]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)


class DatabaseComponent:
    """Connects, verifies the server, and brings the schema to head (backing up first)."""

    name = "database"

    def __init__(self, runtime: Runtime, *, migrate: bool) -> None:
        self._runtime = runtime
        self._migrate = migrate

    async def start(self) -> None:
        from bot.db.engine import create_engine, session_factory, verify_connection
        from bot.db.migrate import check_at_head, upgrade_to_head

        settings = self._runtime.settings
        url = settings.effective_database_url
        engine = create_engine(url, settings=settings.database)
        try:
            version = await verify_connection(engine)
            if self._migrate:
                report = await upgrade_to_head(url, backup_dir=settings.data_dir / "backups", settings=settings)
                log.info("database schema ready", report=str(report))
            else:
                await check_at_head(url)
        except BaseException:
            await engine.dispose()
            raise
        self._runtime.engine = engine
        self._runtime.session_factory = session_factory(engine)
        self._runtime.health_checks["database"] = self._ping
        log.info("database connected", url=redact_url(url), server=version)

    async def _ping(self) -> bool:
        from sqlalchemy import text

        try:
            async with self._runtime.engine.connect() as connection:
                await connection.execute(text("select 1"))
        except Exception:  # health probe boundary: any failure means unhealthy, logged once
            log.warning("database ping failed", exc_info=True)
            return False
        return True

    async def stop(self) -> None:
        if self._runtime.engine is not None:
            await self._runtime.engine.dispose()


class Daemon:
    """Runs the components until a signal arrives, then drains them in reverse order."""

    def __init__(self, settings: Settings, *, migrate: bool = True) -> None:
        self.runtime = Runtime(settings=settings)
        self.components: list[Component] = build_components(self.runtime, migrate=migrate)
        self._started: list[Component] = []
        self._stop_event = asyncio.Event()

    def request_stop(self, reason: str) -> None:
        """Begin a graceful shutdown (idempotent)."""
        if not self._stop_event.is_set():
            log.info("shutdown requested", reason=reason)
            self._stop_event.set()

    async def run(self) -> None:
        """Start everything, notify systemd, serve until asked to stop, then drain."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            for component in self.components:
                if self._stop_event.is_set():
                    break
                log.info("starting component", component=component.name)
                self._started.append(component)
                await component.start()
            if not self._stop_event.is_set():
                notify(f"READY=1\nSTATUS=running {len(self._started)} components")
                log.info(
                    "orchestrator ready",
                    version=__version__,
                    components=[c.name for c in self._started],
                )
            watchdog = asyncio.create_task(self._feed_watchdog(), name="watchdog")
            await self._stop_event.wait()
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        finally:
            notify("STOPPING=1")
            await self._stop_all()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            log.info("orchestrator stopped")

    async def _stop_all(self) -> None:
        budget = self.runtime.settings.shutdown_timeout_s
        deadline = time.monotonic() + budget
        for component in reversed(self._started):
            remaining = max(0.5, deadline - time.monotonic())
            try:
                await asyncio.wait_for(component.stop(), timeout=remaining)
                log.info("stopped component", component=component.name)
            except TimeoutError:
                log.error("component did not stop in time", component=component.name, timeout_s=remaining)
            except Exception:  # shutdown boundary: one failing stop must not strand the others
                log.exception("component failed to stop", component=component.name)
        self._started.clear()

    async def _feed_watchdog(self) -> None:
        interval = watchdog_interval_s()
        if interval is None:
            return
        while True:
            if await self.healthy():
                notify("WATCHDOG=1")
            else:
                log.warning("unhealthy: not feeding the systemd watchdog")
            await asyncio.sleep(interval)

    async def healthy(self) -> bool:
        """True when every registered health check passes."""
        for check in list(self.runtime.health_checks.values()):
            if not await check():
                return False
        return True


def build_components(runtime: Runtime, *, migrate: bool) -> list[Component]:
    """The daemon's components, in start order, for what the settings enable."""
    settings = runtime.settings
    for secret in (settings.slack.bot_token, settings.slack.app_token, settings.slack.signing_secret,
                   settings.discord.bot_token, settings.lmstudio.api_token, settings.vault.keys):
        if secret is not None:
            register_secret(secret.get_secret_value())
    components: list[Component] = [DatabaseComponent(runtime, migrate=migrate)]
    return components


async def run_daemon(settings: Settings, *, migrate: bool = True) -> None:
    """Run the daemon until SIGTERM/SIGINT."""
    await Daemon(settings, migrate=migrate).run()
