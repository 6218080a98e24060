"""Health checks every 10 s: database, providers, chat connections, queue progress, the sampler.

Each component registers a `HealthCheck`. A failing check opens an incident (and an alert); after
`restart_after_failures` failures in a row a registered restart callable is tried, within an
hourly budget. The systemd watchdog is fed only while every *critical* check passes, so when the
daemon hangs (no check runs) or stays broken (restarts did not help) systemd restarts it. A
provider being down is not critical: restarting our daemon would not bring LM Studio back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from bot.db.models.enums import Severity
from bot.engine.providers.port import LLMProvider
from bot.engine.queue import JobQueue
from bot.events import Event
from bot.logs import get_logger
from bot.monitor.store import MonitorStore

log = get_logger(__name__)

HEALTH_TOPIC = "monitor"
Restart = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict; `recovered` lists what the check itself repaired (requeued jobs…)."""

    ok: bool
    detail: str = ""
    recovered: tuple[str, ...] = ()


@runtime_checkable
class HealthCheck(Protocol):
    """Something that can say whether it works; chat connections implement this to be watched."""

    name: str
    critical: bool

    async def check(self) -> CheckResult:
        """Whether the component works now; may raise (counted as a failure with the error)."""
        ...


class DatabaseCheck:
    """One `select 1` round trip."""

    name = "database"
    critical = True

    def __init__(self, store: MonitorStore) -> None:
        self._store = store

    async def check(self) -> CheckResult:
        """Ping the database."""
        started = time.perf_counter()
        await self._store.ping()
        return CheckResult(ok=True, detail=f"{(time.perf_counter() - started) * 1000:.1f} ms")


class ProviderCheck:
    """The provider's own health endpoint (LM Studio, Ollama, …)."""

    critical = False

    def __init__(self, provider: LLMProvider) -> None:
        self.provider = provider
        self.name = f"provider:{provider.name}"

    async def check(self) -> CheckResult:
        """Ask the provider."""
        status = await self.provider.health()
        latency = f"{status.latency_ms:.0f} ms" if status.latency_ms is not None else "no answer"
        return CheckResult(ok=status.ok, detail=status.detail or latency)


class QueueProgressCheck:
    """Recovers stuck jobs (lease expired or past their timeout) and notices a stalled queue.

    A stall is work waiting, admission open, nothing running, and no job finishing for
    `stall_after_s`: the worker is not claiming, which a restart of the worker fixes.
    """

    name = "queue"
    critical = True

    def __init__(
        self,
        *,
        queue: JobQueue,
        admitting: Callable[[], bool] = lambda: True,
        stall_after_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._admitting = admitting
        self._stall_after_s = stall_after_s
        self._clock = clock
        self._last_progress_marker: tuple[int, int] | None = None
        self._last_progress_at = clock()

    async def check(self) -> CheckResult:
        """Reclaim stuck jobs, then look for a stall."""
        report = await self._queue.reclaim_expired()
        recovered = tuple(f"job {job_id} requeued after it got stuck" for job_id in report.requeued) + tuple(
            f"job {job_id} dead-lettered: out of attempts after it got stuck" for job_id in report.dead
        )
        counts = await self._queue.counts()
        finished = sum(counts.get(status, 0) for status in ("succeeded", "dead", "cancelled"))
        running = counts.get("running", 0)
        queued = counts.get("queued", 0)
        marker = (finished, running)
        now = self._clock()
        if marker != self._last_progress_marker or queued == 0 or running > 0 or not self._admitting():
            self._last_progress_marker = marker
            self._last_progress_at = now
        stalled_for = now - self._last_progress_at
        detail = f"{queued} queued, {running} running"
        if recovered:
            detail += f"; recovered {len(recovered)} stuck job(s)"
        if stalled_for >= self._stall_after_s:
            return CheckResult(
                ok=False,
                detail=f"queue stalled: {queued} queued and none started for {stalled_for:.0f} s",
                recovered=recovered,
            )
        return CheckResult(ok=True, detail=detail, recovered=recovered)


@dataclass
class _Registered:
    check: HealthCheck
    restart: Restart | None
    failures: int = 0
    incident_id: int | None = None
    last: CheckResult | None = None
    restarts: deque[float] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The outcome of one round of checks."""

    healthy: bool
    results: dict[str, CheckResult]
    restarted: tuple[str, ...] = ()
    fed_watchdog: bool = False

    def as_json(self) -> dict[str, Any]:
        """JSON-ready form for /status and the admin API."""
        return {
            "healthy": self.healthy,
            "checks": {
                name: {"ok": result.ok, "detail": result.detail, "recovered": list(result.recovered)}
                for name, result in self.results.items()
            },
            "restarted": list(self.restarted),
            "fed_watchdog": self.fed_watchdog,
        }


class HealthMonitor:
    """Runs the registered checks on a fixed interval and acts on what they find."""

    def __init__(
        self,
        *,
        store: MonitorStore | None = None,
        publish: Callable[[Event], None] | None = None,
        feed_watchdog: Callable[[], object] | None = None,
        interval_s: float = 10.0,
        timeout_s: float = 5.0,
        restart_after_failures: int = 2,
        max_restarts_per_hour: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._publish = publish
        self._feed_watchdog = feed_watchdog
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.restart_after_failures = restart_after_failures
        self.max_restarts_per_hour = max_restarts_per_hour
        self._clock = clock
        self._checks: dict[str, _Registered] = {}
        self._task: asyncio.Task[None] | None = None
        self.last_report: HealthReport | None = None
        self._last_report_at: float | None = None
        self.watchdog_feeds = 0

    def register(self, check: HealthCheck, *, restart: Restart | None = None) -> None:
        """Watch a component; `restart` is how to bring it back when it keeps failing."""
        if check.name in self._checks:
            raise ValueError(f"a health check named {check.name!r} is already registered")
        self._checks[check.name] = _Registered(check=check, restart=restart)

    def unregister(self, name: str) -> None:
        """Stop watching a component (e.g. a chat connection that was disabled)."""
        self._checks.pop(name, None)

    @property
    def check_names(self) -> list[str]:
        """Names of the registered checks."""
        return list(self._checks)

    async def is_healthy(self) -> bool:
        """Whether the last round found every critical check passing and is recent.

        False before any round, and False when no round finished in three intervals: a health
        loop that hangs must not keep reporting its last good verdict.
        """
        if self.last_report is None or self._last_report_at is None:
            return False
        fresh = self._clock() - self._last_report_at <= 3 * self.interval_s + self.timeout_s
        return fresh and self.last_report.healthy

    async def _run_check(self, entry: _Registered) -> CheckResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await entry.check.check()
        except TimeoutError:
            return CheckResult(ok=False, detail=f"no answer within {self.timeout_s:g} s")
        except Exception as err:  # check boundary: any exception is this component's failure
            return CheckResult(ok=False, detail=f"{type(err).__name__}: {err}")

    async def run_once(self) -> HealthReport:
        """One round: run every check, record incidents, restart what keeps failing, feed systemd."""
        entries = list(self._checks.values())
        results = await asyncio.gather(*(self._run_check(entry) for entry in entries))
        restarted: list[str] = []
        for entry, result in zip(entries, results, strict=True):
            entry.last = result
            if result.recovered:
                await self._record_recovery(entry, result)
            if result.ok:
                if entry.failures:
                    await self._resolve(entry, result)
                entry.failures = 0
                continue
            entry.failures += 1
            if entry.failures == 1:
                await self._open(entry, result)
            wants_restart = entry.failures >= self.restart_after_failures and entry.restart is not None
            if wants_restart and await self._restart(entry):
                restarted.append(entry.check.name)
        healthy = all(result.ok for entry, result in zip(entries, results, strict=True) if entry.check.critical)
        fed = False
        if healthy and self._feed_watchdog is not None:
            self._feed_watchdog()
            self.watchdog_feeds += 1
            fed = True
        elif not healthy:
            failing = [e.check.name for e, r in zip(entries, results, strict=True) if e.check.critical and not r.ok]
            log.warning("unhealthy: the systemd watchdog is not fed", failing=failing)
        report = HealthReport(
            healthy=healthy,
            results={entry.check.name: result for entry, result in zip(entries, results, strict=True)},
            restarted=tuple(restarted),
            fed_watchdog=fed,
        )
        self.last_report = report
        self._last_report_at = self._clock()
        if self._publish is not None:
            self._publish(Event(topic=HEALTH_TOPIC, kind="health", payload=report.as_json()))
        return report

    async def _restart(self, entry: _Registered) -> bool:
        now = self._clock()
        while entry.restarts and now - entry.restarts[0] > 3600:
            entry.restarts.popleft()
        name = entry.check.name
        if len(entry.restarts) >= self.max_restarts_per_hour:
            await self._note(entry, "restart skipped", f"{len(entry.restarts)} restarts in the last hour", ok=False)
            return False
        entry.restarts.append(now)
        assert entry.restart is not None
        try:
            async with asyncio.timeout(max(self.timeout_s, 30.0)):
                await entry.restart()
        except Exception as err:  # restart boundary: a failed restart is recorded; the next round retries
            log.exception("component restart failed", component=name)
            await self._note(entry, "restart", f"failed: {type(err).__name__}: {err}", ok=False)
            return False
        log.warning("component restarted after failing health checks", component=name, failures=entry.failures)
        await self._note(entry, "restart", f"restarted after {entry.failures} failed checks", ok=True)
        return True

    # -- incidents and alerts (the database may be the thing that is down: never raise) ------

    async def _safely(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if self._store is None:
            return None
        try:
            return await call()
        except Exception as err:  # recording boundary: a down database must not stop the checks
            log.warning("cannot record health incident", what=what, error=f"{type(err).__name__}: {err}")
            return None

    async def _open(self, entry: _Registered, result: CheckResult) -> None:
        name = entry.check.name
        severity = Severity.CRITICAL if entry.check.critical else Severity.WARNING
        log.warning("health check failed", check=name, detail=result.detail)
        messages = {
            "en": f"{name} failed its health check: {result.detail}",
            "pt-BR": f"{name} falhou na verificação de saúde: {result.detail}",
        }
        alert_id: int | None = None
        store = self._store
        if store is not None:
            entry.incident_id = await self._safely(
                "open",
                lambda: store.open_incident(
                    kind=f"health.{name}"[:64],
                    title=f"{name} failed its health check",
                    description=result.detail,
                    severity=severity,
                    details={"check": name, "critical": entry.check.critical},
                ),
            )
            raised = await self._safely(
                "alert",
                lambda: store.raise_alert(
                    kind="health",
                    dedupe_key=f"health:{name}",
                    message=messages["en"],
                    severity=severity,
                    data={"check": name, "detail": result.detail, "messages": messages},
                ),
            )
            alert_id = raised[0] if raised else None
        # The same shape as a rule's alert, so the chat alert relay posts it to the alert channel.
        self._event(
            "alert",
            rule=f"health:{name}",
            state="fired",
            severity=severity.value,
            reading=name,
            value=None,
            messages=messages,
            outcome=result.detail,
            incident_id=entry.incident_id,
            alert_id=alert_id,
            chart_metrics=[],
        )

    async def _resolve(self, entry: _Registered, result: CheckResult) -> None:
        name = entry.check.name
        log.info("health check recovered", check=name, after_failures=entry.failures)
        alert_id: int | None = None
        store = self._store
        if store is not None:
            if entry.incident_id is not None:
                incident_id = entry.incident_id
                await self._safely(
                    "resolve", lambda: store.resolve_incident(incident_id, outcome=f"healthy again: {result.detail}")
                )
            alert_id = await self._safely("alert", lambda: store.resolve_alert(f"health:{name}"))
        messages = {"en": f"{name} is healthy again", "pt-BR": f"{name} está saudável novamente"}
        self._event(
            "alert_cleared",
            rule=f"health:{name}",
            state="cleared",
            severity="info",
            reading=name,
            value=None,
            messages=messages,
            outcome=result.detail,
            incident_id=entry.incident_id,
            alert_id=alert_id,
            chart_metrics=[],
        )
        entry.incident_id = None

    async def _note(self, entry: _Registered, action: str, outcome: str, *, ok: bool) -> None:
        store = self._store
        if store is not None and entry.incident_id is not None:
            incident_id = entry.incident_id
            await self._safely(
                "note", lambda: store.add_incident_action(incident_id, action=action, outcome=outcome, ok=ok)
            )

    async def _record_recovery(self, entry: _Registered, result: CheckResult) -> None:
        name = entry.check.name
        log.warning("health check recovered stuck work", check=name, recovered=list(result.recovered))
        store = self._store
        if store is not None:

            async def record() -> None:
                incident_id = await store.open_incident(
                    kind=f"health.{name}.recovered"[:64],
                    title=f"{name}: {len(result.recovered)} stuck item(s) recovered",
                    description="; ".join(result.recovered),
                    severity=Severity.WARNING,
                    details={"check": name, "recovered": list(result.recovered)},
                )
                for item in result.recovered:
                    await store.add_incident_action(incident_id, action="recover", outcome=item, mitigated=True)
                await store.resolve_incident(incident_id, outcome="recovered automatically")

            await self._safely("recovery", record)
        self._event("recovered", name=name, detail="; ".join(result.recovered), severity="warning")

    def _event(self, kind: str, **payload: Any) -> None:
        if self._publish is not None:
            self._publish(Event(topic=HEALTH_TOPIC, kind=kind, payload=payload))

    # -- background loop ---------------------------------------------------------------------

    async def start(self) -> None:
        """Begin checking in the background."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="monitor-health")

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.run_once()
            except Exception:  # loop boundary: a bug in one round must not end health checking
                log.exception("health round failed")
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))


def providers_checks(providers: Sequence[LLMProvider]) -> list[HealthCheck]:
    """A health check for each provider."""
    return [ProviderCheck(provider) for provider in providers]
