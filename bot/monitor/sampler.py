"""1 Hz sampling in the background: a ring buffer of the last hour and a per-minute history.

One tick reads every probe concurrently; a probe that raises or overruns its time does not stop
the others, and its readings become "unavailable: probe X failed: …" for that tick instead of
disappearing or turning into zeros. Listeners are plain callables invoked after each tick; they
must be quick (they hand the sample to their own queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from bot.logs import get_logger
from bot.monitor.probes import Probe
from bot.monitor.readings import Reading, Sample
from bot.monitor.store import MetricRow, split_metric_name

log = get_logger(__name__)

SampleListener = Callable[[Sample], None]


class Sampler:
    """Reads the probes every `interval_s` and keeps `history_s` worth of samples in memory."""

    def __init__(
        self,
        *,
        probes: Sequence[Probe],
        interval_s: float = 1.0,
        history_s: float = 3600.0,
        probe_timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.probes = list(probes)
        self.interval_s = interval_s
        self.probe_timeout_s = probe_timeout_s if probe_timeout_s is not None else max(0.05, interval_s * 0.8)
        self._clock = clock
        self._buffer: deque[Sample] = deque(maxlen=max(1, int(history_s / interval_s)))
        self._listeners: list[SampleListener] = []
        self._known_names: dict[str, list[tuple[str, str]]] = {}
        self._failing: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.overruns = 0

    # -- listeners and reads -----------------------------------------------------------------

    def add_listener(self, listener: SampleListener) -> Callable[[], None]:
        """Call `listener` with every new sample; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    @property
    def latest(self) -> Sample | None:
        """The most recent sample, None before the first tick."""
        return self._buffer[-1] if self._buffer else None

    def history(self, *, since: float | None = None) -> list[Sample]:
        """Samples in memory (the last hour by default), oldest first."""
        if since is None:
            return list(self._buffer)
        return [sample for sample in self._buffer if sample.at >= since]

    # -- one tick ----------------------------------------------------------------------------

    async def sample_once(self) -> Sample:
        """Read every probe once, store the sample and tell the listeners."""
        results = await asyncio.gather(*(self._read(probe) for probe in self.probes))
        readings: list[Reading] = [reading for group in results for reading in group]
        sample = Sample.build(self._clock(), readings)
        self._buffer.append(sample)
        self.ticks += 1
        for listener in tuple(self._listeners):
            try:
                listener(sample)
            except Exception:  # listener boundary: one broken consumer must not stop sampling
                log.exception("sample listener failed", listener=repr(listener))
        return sample

    async def _read(self, probe: Probe) -> Sequence[Reading]:
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                readings = list(await probe.read())
        except TimeoutError:
            return self._failed(probe, f"probe {probe.name} took longer than {self.probe_timeout_s:.2f} s")
        except Exception as err:  # probe boundary: third-party libraries raise anything; keep sampling
            return self._failed(probe, f"probe {probe.name} failed: {type(err).__name__}: {err}")
        if probe.name in self._failing:
            log.info("probe recovered", probe=probe.name, was=self._failing.pop(probe.name))
        self._known_names[probe.name] = [(reading.name, reading.unit) for reading in readings]
        return readings

    def _failed(self, probe: Probe, reason: str) -> list[Reading]:
        if self._failing.get(probe.name) != reason:
            # Logged when the failure starts or changes, not at every tick.
            log.warning("probe failing; its readings are unavailable", probe=probe.name, reason=reason)
            self._failing[probe.name] = reason
        names = self._known_names.get(probe.name, [])
        readings = [Reading.unavailable(name, reason, unit) for name, unit in names]
        readings.append(Reading.unavailable(f"probe.{probe.name}", reason))
        return readings

    @property
    def failing_probes(self) -> dict[str, str]:
        """Probes failing right now, with their reason."""
        return dict(self._failing)

    # -- background loop ---------------------------------------------------------------------

    async def start(self) -> None:
        """Begin sampling in the background."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="monitor-sampler")

    @property
    def running(self) -> bool:
        """Whether the background loop is alive."""
        return self._task is not None and not self._task.done()

    async def stop_loop(self) -> None:
        """Stop the background loop, keeping the probes (for a restart)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def stop(self) -> None:
        """Stop sampling and release the probes."""
        await self.stop_loop()
        for probe in self.probes:
            with contextlib.suppress(Exception):  # closing is best effort; nothing else to do on failure
                await probe.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            await self.sample_once()
            next_tick += self.interval_s
            now = loop.time()
            if next_tick < now:
                # Fell behind (a stalled loop): skip the missed ticks instead of bursting to catch up.
                self.overruns += 1
                next_tick = now + self.interval_s
            await asyncio.sleep(next_tick - now)


class Downsampler:
    """Averages samples over fixed windows (a minute) into rows for the history table."""

    def __init__(self, *, window_s: float = 60.0, exclude: Iterable[str] = ()) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self._exclude = tuple(exclude)
        self._window_start: float | None = None
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def _kept(self, name: str) -> bool:
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in self._exclude)

    def add(self, sample: Sample) -> list[MetricRow]:
        """Account one sample; returns the rows of the window it closed (usually none)."""
        start = sample.at - (sample.at % self.window_s)
        closed: list[MetricRow] = []
        if self._window_start is not None and start > self._window_start:
            closed = self.flush()
        if self._window_start is None or start > self._window_start:
            self._window_start = start
        for name, reading in sample.readings.items():
            if reading.available and reading.value is not None and self._kept(name):
                self._sums[name] = self._sums.get(name, 0.0) + reading.value
                self._counts[name] = self._counts.get(name, 0) + 1
        return closed

    def flush(self) -> list[MetricRow]:
        """Rows for the current window (also used at shutdown so the last minute is kept)."""
        if self._window_start is None or not self._counts:
            self._sums.clear()
            self._counts.clear()
            return []
        at = datetime.fromtimestamp(self._window_start, UTC)
        rows = []
        for name, count in sorted(self._counts.items()):
            metric, source = split_metric_name(name)
            rows.append(MetricRow(metric=metric, source=source, value=self._sums[name] / count, at=at))
        self._sums.clear()
        self._counts.clear()
        return rows
