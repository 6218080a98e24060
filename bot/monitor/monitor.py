"""The Monitor component: sampler, rules, history and health checks wired together.

The daemon builds one `Monitor` and starts it after the database. It samples every second,
streams each sample on the event bus (topic "monitor", kind "sample") for the admin API's
WebSocket, feeds the rules (whose alerts go out as "alert"/"alert_cleared" events and through
`on_alert`), writes a per-minute average of every reading to `metric_samples`, and runs the
health checks that decide whether systemd's watchdog is fed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.aio import cancel_and_wait
from bot.engine.providers.port import LLMProvider
from bot.engine.queue import JobQueue
from bot.events import Event, EventBus
from bot.logs import get_logger
from bot.monitor.actions import (
    Action,
    AlertOnly,
    CleanDisk,
    PauseAdmission,
    PreferSmallerModels,
    UnloadIdleModels,
)
from bot.monitor.charts import render_png_async
from bot.monitor.config import MonitorSettings
from bot.monitor.health import (
    CheckResult,
    DatabaseCheck,
    HealthCheck,
    HealthMonitor,
    ProviderCheck,
    QueueProgressCheck,
    Restart,
)
from bot.monitor.probes import Probe, ProviderLatencyProbe, default_probes
from bot.monitor.readings import Sample
from bot.monitor.rules import AlertCallback, RuleEngine
from bot.monitor.sampler import Downsampler, Sampler
from bot.monitor.state import MonitorState
from bot.monitor.store import MetricRow, MonitorStore

log = get_logger(__name__)

SAMPLE_TOPIC = "monitor"
_RULE_BACKLOG = 300


class SamplerCheck:
    """The sampler itself: its loop must be alive and its last sample recent."""

    name = "sampler"
    critical = True

    def __init__(self, sampler: Sampler, *, stale_after_s: float, clock: Callable[[], float] = time.time) -> None:
        self._sampler = sampler
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._first_check_at: float | None = None

    async def check(self) -> CheckResult:
        """Fresh samples are flowing."""
        latest = self._sampler.latest
        if latest is None:
            # Right after start the first tick may not have happened: allow the same grace as staleness.
            if self._first_check_at is None:
                self._first_check_at = self._clock()
            waited = self._clock() - self._first_check_at
            if waited <= self._stale_after_s:
                return CheckResult(ok=True, detail="waiting for the first sample")
            return CheckResult(ok=False, detail=f"no sample taken in {waited:.0f} s")
        age = self._clock() - latest.at
        if age > self._stale_after_s:
            return CheckResult(ok=False, detail=f"last sample is {age:.0f} s old")
        failing = self._sampler.failing_probes
        detail = f"{self._sampler.ticks} ticks" + (f"; failing probes: {', '.join(failing)}" if failing else "")
        return CheckResult(ok=True, detail=detail)


class Monitor:
    """The system monitor as one daemon component (start/stop)."""

    name = "monitor"

    def __init__(
        self,
        *,
        settings: MonitorSettings,
        data_dir: Path,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        bus: EventBus | None = None,
        providers: Callable[[], Iterable[LLMProvider]] = tuple,
        probes: Sequence[Probe] | None = None,
        queue: JobQueue | None = None,
        on_admission_resumed: Callable[[], None] | None = None,
        feed_watchdog: Callable[[], object] | None = None,
        on_alert: AlertCallback | None = None,
        state: MonitorState | None = None,
        extra_actions: Mapping[str, Action] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state or MonitorState()
        self.bus = bus
        self._providers = providers
        self.store = MonitorStore(sessions) if sessions is not None else None
        if probes is None:
            probes = default_probes(providers=providers)
        for probe in probes:
            if isinstance(probe, ProviderLatencyProbe):
                probe.every_s = settings.latency_every_s
        self.sampler = Sampler(probes=probes, interval_s=settings.interval_s, history_s=settings.history_s, clock=clock)
        actions: dict[str, Action] = {
            "pause_admission": PauseAdmission(self.state, on_resume=on_admission_resumed),
            "unload_idle_models": UnloadIdleModels(state=self.state, providers=providers),
            "prefer_smaller_models": PreferSmallerModels(self.state),
            "clean_disk": CleanDisk(data_dir=data_dir, retention=settings.retention),
            "alert": AlertOnly(),
        }
        actions.update(extra_actions or {})
        self.rules = RuleEngine(
            rules=settings.rules,
            actions=actions,
            store=self.store,
            publish=self._publish,
            on_alert=on_alert,
            action_timeout_s=settings.action_timeout_s,
        )
        self.downsampler = Downsampler(window_s=settings.downsample_s, exclude=settings.history_exclude)
        self.health = HealthMonitor(
            store=self.store,
            publish=self._publish,
            feed_watchdog=feed_watchdog,
            interval_s=settings.health_interval_s,
            timeout_s=settings.health_timeout_s,
            restart_after_failures=settings.restart_after_failures,
            max_restarts_per_hour=settings.max_restarts_per_hour,
        )
        self.health.register(
            SamplerCheck(self.sampler, stale_after_s=max(5.0, settings.interval_s * 5), clock=clock),
            restart=self._restart_sampler,
        )
        if self.store is not None:
            self.health.register(DatabaseCheck(self.store))
        if queue is not None:
            self.health.register(QueueProgressCheck(queue=queue, admitting=self.state.admit))
        self._rule_queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=_RULE_BACKLOG)
        self._history_queue: asyncio.Queue[list[MetricRow]] = asyncio.Queue(maxsize=120)
        self._tasks: list[asyncio.Task[None]] = []
        self._remove_listener: Callable[[], None] | None = None
        self.rules_dropped = 0

    # -- wiring ------------------------------------------------------------------------------

    def register_health_check(self, check: HealthCheck, *, restart: Restart | None = None) -> None:
        """Watch another component (a chat connection, the worker) with its restart callable."""
        self.health.register(check, restart=restart)

    def register_providers(self, providers: Iterable[LLMProvider]) -> None:
        """Add a health check for each provider (not critical: restarting us cannot fix them)."""
        for provider in providers:
            name = f"provider:{provider.name}"
            if name not in self.health.check_names:
                self.health.register(ProviderCheck(provider))

    def _publish(self, event: Event) -> None:
        if self.bus is not None:
            self.bus.publish(event)

    def _on_sample(self, sample: Sample) -> None:
        self.state.latest = sample
        self._publish(Event(topic=SAMPLE_TOPIC, kind="sample", payload=sample.to_json()))
        try:
            self._rule_queue.put_nowait(sample)
        except asyncio.QueueFull:
            # Rules are behind (an action is slow): drop the oldest sample, keep the newest.
            self._rule_queue.get_nowait()
            self._rule_queue.put_nowait(sample)
            self.rules_dropped += 1
        rows = self.downsampler.add(sample)
        if rows and self.store is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._history_queue.put_nowait(rows)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Close what a previous run left open, then sample, evaluate, record and check."""
        if self.store is not None:
            await self._close_stale_incidents()
        self.register_providers(self._providers())
        self._remove_listener = self.sampler.add_listener(self._on_sample)
        self._tasks = [
            asyncio.create_task(self._rules_loop(), name="monitor-rules"),
            asyncio.create_task(self._history_loop(), name="monitor-history"),
        ]
        await self.sampler.start()
        await self.health.start()
        log.info("monitor started", probes=[p.name for p in self.sampler.probes], rules=len(self.rules.rules))

    async def stop(self) -> None:
        """Stop every loop and write the last partial minute of history."""
        await self.health.stop()
        await self.sampler.stop()
        if self._remove_listener is not None:
            self._remove_listener()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        rows = self.downsampler.flush()
        if rows and self.store is not None:
            with contextlib.suppress(Exception):  # shutdown: a down database loses one minute, logged below
                await self.store.write_metrics(rows)
                rows = []
            if rows:
                log.warning("last minute of metric history not written at shutdown")

    async def _restart_sampler(self) -> None:
        await self.sampler.stop_loop()
        await self.sampler.start()

    async def _close_stale_incidents(self) -> None:
        """Rule incidents left open by a previous process: their actions died with it."""
        assert self.store is not None
        try:
            stale = await self.store.open_incidents(kind_prefix="monitor.")
            for incident in stale:
                await self.store.resolve_incident(incident.id, outcome="daemon restarted; rule re-evaluated from now")
                await self.store.resolve_alert(f"monitor:{incident.kind.removeprefix('monitor.')}")
        except Exception as err:  # start boundary: stale bookkeeping must not keep the monitor down
            log.warning("cannot close stale monitor incidents", error=f"{type(err).__name__}: {err}")

    async def _rules_loop(self) -> None:
        while True:
            sample = await self._rule_queue.get()
            try:
                await self.rules.process(sample)
            except Exception:  # loop boundary: a failing round (e.g. database down) must not stop the rules
                log.exception("rule evaluation failed")

    async def _history_loop(self) -> None:
        last_prune = 0.0
        while True:
            rows = await self._history_queue.get()
            if self.store is None:
                continue
            try:
                await self.store.write_metrics(rows)
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    retention = self.settings.retention
                    await self.store.prune(
                        metrics_older_than=timedelta(days=retention.metric_history_days),
                        incidents_older_than=timedelta(days=retention.resolved_incident_days),
                    )
            except Exception as err:  # history boundary: a minute lost while the database is down
                log.warning("cannot write metric history", rows=len(rows), error=f"{type(err).__name__}: {err}")

    # -- reads for /status, charts and the admin API -----------------------------------------

    async def chart_png(self, metrics: Sequence[str], *, last_s: float = 3600.0, title: str | None = None) -> bytes:
        """A PNG of the given metrics over the last `last_s` seconds from memory."""
        latest = self.sampler.latest
        since = (latest.at if latest else time.time()) - last_s
        samples = self.sampler.history(since=since)
        return await render_png_async(samples, metrics=metrics, title=title or f"last {last_s / 60:.0f} min")

    def status(self) -> dict[str, Any]:
        """The latest sample, the flags, every rule's phase and the last health round."""
        latest = self.sampler.latest
        return {
            "latest": latest.to_json() if latest else None,
            "state": self.state.as_json(),
            "rules": self.rules.snapshot(),
            "health": self.health.last_report.as_json() if self.health.last_report else None,
            "failing_probes": self.sampler.failing_probes,
            "ticks": self.sampler.ticks,
        }
