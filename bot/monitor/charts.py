"""PNG charts of the last hour for /status and alerts, drawn with matplotlib (imported lazily).

Uses matplotlib's object API with the Agg canvas, never pyplot, so no global backend or figure
registry is touched and rendering is safe in a worker thread. Unavailable readings are gaps, not
zeros; a metric with no value at all says why in its legend entry.
"""

from __future__ import annotations

import asyncio
import fnmatch
import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from bot.monitor.readings import Sample

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_SERIES = 12


def _series_names(samples: Sequence[Sample], patterns: Sequence[str]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        is_glob = any(char in pattern for char in "*?[")
        for sample in samples:
            for name in sample.readings:
                if name not in seen and (fnmatch.fnmatchcase(name, pattern) if is_glob else name == pattern):
                    seen.add(name)
                    names.append(name)
        if not is_glob and pattern not in seen:
            seen.add(pattern)
            names.append(pattern)
    return names[:MAX_SERIES]


def render_png(
    samples: Sequence[Sample],
    *,
    metrics: Sequence[str],
    title: str = "last hour",
    width_px: int = 900,
    height_px: int = 420,
) -> bytes:
    """One PNG line chart of `metrics` (names or globs) over the given samples."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter, date2num
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    times = [float(date2num(datetime.fromtimestamp(sample.at, UTC))) for sample in samples]  # type: ignore[no-untyped-call]
    units: set[str] = set()
    for name in _series_names(samples, metrics):
        values: list[float] = []
        reason: str | None = None
        for sample in samples:
            reading = sample.readings.get(name)
            if reading is not None and reading.available and reading.value is not None:
                values.append(reading.value)
                units.add(reading.unit)
            else:
                values.append(math.nan)
                if reading is not None and reading.reason:
                    reason = reading.reason
        if times and any(not math.isnan(value) for value in values):
            axes.plot(times, values, label=name, linewidth=1.2)
        else:
            axes.plot([], [], label=f"{name}: unavailable ({(reason or 'no data')[:60]})")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=UTC))  # type: ignore[no-untyped-call]
    if len(units) == 1:
        axes.set_ylabel(units.pop() or "value")
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


async def render_png_async(samples: Sequence[Sample], *, metrics: Sequence[str], title: str = "last hour") -> bytes:
    """`render_png` in a worker thread (drawing takes ~100 ms; the event loop keeps running)."""
    return await asyncio.to_thread(render_png, list(samples), metrics=list(metrics), title=title)
