"""The composition root: builds every component from the settings and runs them as one daemon.

Components start in order and stop in reverse. A component that fails to start stops the ones
already started and the daemon exits with the error. SIGTERM/SIGINT begin a drain bounded by
`shutdown_timeout_s`; a component that does not stop in its share of that time is abandoned with
a log line, so the process always exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot import __version__
from bot.aio import cancel_and_wait, freeze_startup_heap
from bot.errors import OrchestratorError
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
    vault: Any = None
    monitor_state: Any = None
    monitor: Any = None
    engine_runtime: Any = None
    chat_platforms: dict[str, Any] = field(default_factory=dict)
    admin_api: Any = None
    knowledge_embedder: Any = None  # set by KnowledgeSyncComponent; the admin API's semantic search uses it
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
        if not self._migrate:
            await check_at_head(url)  # first: connecting would create a missing SQLite file
        engine = create_engine(url, settings=settings.database)
        try:
            version = await verify_connection(engine)
            if self._migrate:
                report = await upgrade_to_head(url, backup_dir=settings.data_dir / "backups", settings=settings)
                log.info("database schema ready", report=str(report))
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


class VaultComponent:
    """Opens the keyring (creating it, with a warning to back it up, on first start)."""

    name = "vault"

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def start(self) -> None:
        from bot.vault import open_vault

        self._runtime.vault = open_vault(self._runtime.settings, create=True)

    async def stop(self) -> None:
        self._runtime.vault = None


class EngineComponent:
    """Providers, model registry, router, durable queue and the worker that runs tasks."""

    name = "engine"

    def __init__(self, runtime: Runtime, *, sync_interval_s: float = 300.0, worker_only: bool = False) -> None:
        self._runtime = runtime
        self._sync_interval_s = sync_interval_s
        self._worker_only = worker_only
        self._scheduler: Any = None

    async def start(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        from bot.engine.runtime import EngineRuntime

        state = self._runtime.monitor_state
        engine_runtime = EngineRuntime(settings=self._runtime.settings, db_engine=self._runtime.engine,
                                       sessions=self._runtime.session_factory, bus=self._runtime.bus,
                                       admission=state.admit if state is not None else None,
                                       monitor_state=state, worker_only=self._worker_only)
        self._runtime.engine_runtime = engine_runtime
        await engine_runtime.start()  # logs which providers answer, or that the embedded models are used
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_job(engine_runtime.sync_models, "interval", seconds=self._sync_interval_s,
                                id="models.sync", coalesce=True, max_instances=1)
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._runtime.engine_runtime is not None:
            await self._runtime.engine_runtime.stop()


class MonitorComponent:
    """Hardware probes every second, rules that act on the engine, and 10-second health checks."""

    name = "monitor"

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def start(self) -> None:
        from bot.monitor.monitor import Monitor

        runtime = self._runtime
        engine_runtime = runtime.engine_runtime
        worker = engine_runtime.worker if engine_runtime is not None else None
        runtime.monitor = Monitor(
            settings=runtime.settings.monitor, data_dir=runtime.settings.data_dir,
            sessions=runtime.session_factory, bus=runtime.bus, state=runtime.monitor_state,
            providers=lambda: tuple(engine_runtime.providers.values()) if engine_runtime else (),
            queue=engine_runtime.queue if engine_runtime else None,
            on_admission_resumed=worker.wake if worker is not None else None,
        )
        await runtime.monitor.start()
        # The daemon feeds systemd's watchdog only while the monitor's health rounds pass.
        runtime.health_checks["monitor"] = runtime.monitor.health.is_healthy

    async def stop(self) -> None:
        if self._runtime.monitor is not None:
            await self._runtime.monitor.stop()


class ChatComponent:
    """Slack and Discord when their tokens are set; otherwise, on a terminal, the local console.

    Every platform speaks the same commands through one dispatcher; monitor and engine alerts are
    relayed to each platform's alert channel. Ending the console (Ctrl-D or /quit) stops the daemon.
    """

    name = "chat"

    def __init__(self, runtime: Runtime, *, request_stop: Callable[[str], None]) -> None:
        self._runtime = runtime
        self._request_stop = request_stop
        self._platforms: list[Any] = []
        self._relay: Any = None
        self._console_task: asyncio.Task[None] | None = None
        self._threads: Any = None

    async def start(self) -> None:
        import sys

        from bot.commands.wiring import build_dispatcher
        from bot.platforms import alert_targets, platforms_from_settings
        from bot.platforms.alerts import AlertRelay

        runtime = self._runtime
        settings = runtime.settings
        engine = runtime.engine_runtime.engine if runtime.engine_runtime is not None else None
        registry, dispatcher = build_dispatcher(settings=settings, sessions=runtime.session_factory, engine=engine,
                                                bus=runtime.bus, components={"monitor": runtime.monitor,
                                                                                "vault": runtime.vault})
        self._platforms = platforms_from_settings(settings, sink=dispatcher.handle_event, registry=registry)
        for platform in self._platforms:
            await platform.start()  # each reconnects with backoff on its own (bot/platforms/base.py)
        # Slack's and Discord's HTTP modes arrive at the admin API (/slack/events, /discord/interactions).
        runtime.chat_platforms.update({p.name: p for p in self._platforms})
        targets = alert_targets(settings, self._platforms)
        if targets:
            self._relay = AlertRelay(bus=runtime.bus, targets=targets)
            await self._relay.start()
        if not self._platforms and sys.stdin.isatty():
            await self._start_console(dispatcher)
        # Task threads of a previous run keep getting updates, and their final answers land there.
        self._threads = dispatcher.services.components.get("threads")
        if self._threads is not None:
            await self._threads.resume(self._platforms)

    async def _start_console(self, dispatcher: Any) -> None:
        import sys

        from bot.commands.wiring import console_user
        from bot.platforms.console import ConsolePlatform

        user, sender = await console_user(self._runtime.session_factory, username=None)
        console = ConsolePlatform(sink=dispatcher.handle_event, user_id=sender.user_id,
                                  display_name=sender.display_name, output=sys.stdout,
                                  files_dir=self._runtime.settings.data_dir / "console-files",
                                  language=str(user.language))
        await console.start()
        self._platforms.append(console)

        async def repl() -> None:
            await console.repl()
            self._request_stop("console closed")

        self._console_task = asyncio.create_task(repl(), name="console")

    async def stop(self) -> None:
        if self._console_task is not None:
            self._console_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._console_task
        if self._threads is not None:
            await self._threads.stop()
        if self._relay is not None:
            await self._relay.stop()
        for platform in reversed(self._platforms):
            await platform.stop()


class AdminApiComponent:
    """The aiohttp admin API (CRUD, OAuth callbacks, WebSocket streams, metrics)."""

    name = "admin_api"

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def start(self) -> None:
        from admin_api.server import start_admin_api
        from admin_api.state import Services

        engine_runtime = self._runtime.engine_runtime
        services = Services(
            vault=self._runtime.vault,
            queue=engine_runtime.queue if engine_runtime else None,
            providers=engine_runtime.registry if engine_runtime else None,
            embedder=self._runtime.knowledge_embedder,
            extra={"chat": self._runtime.chat_platforms},
        )
        api = self._runtime.settings.admin_api
        try:
            self._runtime.admin_api = await start_admin_api(
                settings=self._runtime.settings, session_factory=self._runtime.session_factory,
                bus=self._runtime.bus, services=services,
            )
        except OSError as err:
            raise OrchestratorError(
                f"the admin API cannot listen on {api.host}:{api.port}: {err.strerror or err}",
                hint="stop the program using that port or set ORCH_ADMIN_API__PORT",
            ) from err
        log.info("admin API listening", url=self._runtime.admin_api.base_url)

    async def stop(self) -> None:
        if self._runtime.admin_api is not None:
            await self._runtime.admin_api.stop()


_ASKED_TO_STOP = (0, -signal.SIGTERM, -signal.SIGINT)


class WorkerProcessesComponent:
    """`[engine] worker_processes` engine-only processes beside the daemon, restarted when they die.

    Each child is `orchestrator worker` with this process's environment and working directory, so
    it reads the same settings, in a session of its own (Ctrl-C on the daemon's terminal reaches
    the daemon, which stops the children). A child that dies (a signal, an error) is started again
    after a back-off (1 s, doubling to 60 s while it keeps dying within a minute); its leased jobs
    are reclaimed when the leases expire, like any dead daemon's. A child that exits cleanly, or
    dies of SIGTERM/SIGINT before its handlers are installed (a child still starting), was told to
    stop (systemd's stop sends SIGTERM to every process of the unit) and is not restarted.
    On shutdown every child gets SIGTERM (it drains its running subtasks) and, past the shutdown
    budget, SIGKILL.
    """

    name = "workers"

    def __init__(self, runtime: Runtime, count: int) -> None:
        self._runtime = runtime
        self.count = count
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for slot in range(self.count):
            self._tasks.append(asyncio.create_task(self._keep(slot), name=f"worker-process-{slot}"))

    async def _spawn(self, slot: int) -> asyncio.subprocess.Process:
        import sys

        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "worker",
                                                       "--parent", str(os.getpid()),
                                                       stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        self.children[slot] = process
        log.info("worker process started", slot=slot, pid=process.pid)
        return process

    async def _keep(self, slot: int) -> None:
        delay = 1.0
        while not self._stopping:
            started = time.monotonic()
            process = await self._spawn(slot)
            code = await process.wait()
            if self._stopping:
                return
            if code in _ASKED_TO_STOP:
                log.warning("worker process stopped; not restarting it", slot=slot, pid=process.pid)
                return
            if time.monotonic() - started >= 60:  # it had been running fine: not a crash loop
                delay = 1.0
            self.restarts += 1
            log.error("worker process exited; starting it again", slot=slot, pid=process.pid, exit_code=code,
                      after_s=delay)
            await asyncio.sleep(delay)
            delay = min(60.0, delay * 2)

    async def stop(self) -> None:
        self._stopping = True
        running = [p for p in self.children.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        budget = max(1.0, self._runtime.settings.shutdown_timeout_s - 1.0)
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), timeout=budget)
            except TimeoutError:
                log.error("worker process did not stop in time; killing it", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        await cancel_and_wait(self._tasks)


class ParentWatchComponent:
    """Stops a worker process whose daemon is gone (killed outright, it could not stop its children).

    Without it, a daemon killed with SIGKILL outside systemd would leave its workers running, and
    its restart would start as many again.
    """

    name = "parent-watch"

    def __init__(self, parent_pid: int, request_stop: Callable[[str], None], *, every_s: float = 1.0) -> None:
        self._parent_pid = parent_pid
        self._request_stop = request_stop
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="parent-watch")

    async def _watch(self) -> None:
        # Polled: a parent's death sends no signal here unless asked for with prctl (Linux only).
        while True:
            if os.getppid() != self._parent_pid:
                self._request_stop(f"the daemon (pid {self._parent_pid}) is gone")
                return
            await asyncio.sleep(self._every_s)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])


class Daemon:
    """Runs the components until a signal arrives, then drains them in reverse order."""

    def __init__(self, settings: Settings, *, migrate: bool = True, worker_only: bool = False,
                 parent_pid: int | None = None) -> None:
        self.runtime = Runtime(settings=settings)
        self._stop_event = asyncio.Event()
        self.components: list[Component] = build_components(self.runtime, migrate=migrate,
                                                            request_stop=self.request_stop, worker_only=worker_only)
        if parent_pid is not None:
            self.components.insert(0, ParentWatchComponent(parent_pid, self.request_stop))
        self._started: list[Component] = []

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
                freeze_startup_heap()
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


def build_components(
    runtime: Runtime, *, migrate: bool, request_stop: Callable[[str], None] | None = None,
    worker_only: bool = False,
) -> list[Component]:
    """The daemon's components, in start order, for what the settings enable.

    `worker_only` is `orchestrator worker`: the database (never migrated: the daemon does that)
    and the engine, and nothing that talks to people or duplicates the daemon's duties (chat,
    admin API, monitor actions, knowledge syncs, creating a keyring).
    """
    settings = runtime.settings
    for secret in (settings.slack.bot_token, settings.slack.app_token, settings.slack.signing_secret,
                   settings.discord.bot_token, settings.lmstudio.api_token, settings.vault.keys):
        if secret is not None:
            register_secret(secret.get_secret_value())
    from bot.events import EventBus

    runtime.bus = EventBus()
    if worker_only:  # the engine opens the vault itself, read-only, for providers' stored tokens
        return [DatabaseComponent(runtime, migrate=False), EngineComponent(runtime, worker_only=True)]
    components: list[Component] = [
        DatabaseComponent(runtime, migrate=migrate),
        VaultComponent(runtime),
        EngineComponent(runtime),
    ]
    if settings.engine.worker_processes:
        components.append(WorkerProcessesComponent(runtime, settings.engine.worker_processes))
    if settings.monitor.enabled:
        from bot.monitor.state import MonitorState

        runtime.monitor_state = MonitorState()
        components.append(MonitorComponent(runtime))
    from bot.knowledge.scheduler import KnowledgeSyncComponent

    components.append(KnowledgeSyncComponent(runtime))  # knowledge embedder (before the API) + timed source syncs
    if settings.admin_api.enabled:
        components.append(AdminApiComponent(runtime))
    components.append(ChatComponent(runtime, request_stop=request_stop or (lambda _reason: None)))
    return components


async def run_daemon(settings: Settings, *, migrate: bool = True, worker_only: bool = False,
                     parent_pid: int | None = None) -> None:
    """Run the daemon (or, with `worker_only`, an engine-only worker) until SIGTERM/SIGINT.

    `parent_pid`: stop when that process is no longer this one's parent (a daemon's worker).
    """
    await Daemon(settings, migrate=migrate, worker_only=worker_only, parent_pid=parent_pid).run()
