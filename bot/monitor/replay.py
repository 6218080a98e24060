"""ReplaySource: a probe that plays back a recorded stream of samples, one line per tick.

The format is the sampler's own JSON (`Sample.to_json()`), one object per line:

    {"at": 1764130000.0, "readings": {"cpu.percent": {"value": 91.5, "unit": "%"},
                                      "gpu.0.temp_c": {"unavailable": "NVML unavailable", "unit": "°C"}}}

A reading may also be a bare number. Lines starting with `#` are comments. `record_samples`
writes the same format, so a stream captured on a real machine (`orchestrator`'s sampler with a
recorder attached) replays unchanged. `clock()` returns the recorded time of the line last read,
so rules see the recorded timing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from bot.errors import OrchestratorError
from bot.monitor.readings import Reading, Sample

MAX_LINE_BYTES = 1_000_000
MAX_LINES = 1_000_000


class ReplayError(OrchestratorError):
    """A recorded stream cannot be read."""


class ReplayExhaustedError(ReplayError):
    """Every recorded line has been played and looping is off."""


def parse_stream(lines: Iterable[str], *, origin: str = "<stream>") -> list[Sample]:
    """Parse JSONL lines into samples, naming the line of any problem."""
    samples: list[Sample] = []
    for number, line in enumerate(lines, start=1):
        if len(samples) >= MAX_LINES:
            raise ReplayError(f"{origin}: more than {MAX_LINES} samples", hint="split the recording")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if len(stripped) > MAX_LINE_BYTES:
            raise ReplayError(f"{origin}:{number}: line longer than {MAX_LINE_BYTES} bytes")
        try:
            data = json.loads(stripped)
            if not isinstance(data, dict):
                raise ValueError("each line must be a JSON object")
            at = data.get("at")
            if isinstance(at, bool) or not isinstance(at, int | float):
                raise ValueError("'at' must be a number (unix seconds)")
            raw = data.get("readings")
            if not isinstance(raw, dict):
                raise ValueError("'readings' must be an object")
            readings = [Reading.from_json(str(name), value) for name, value in raw.items()]
        except ValueError as err:  # json.JSONDecodeError is a ValueError too
            raise ReplayError(
                f"{origin}:{number}: {err}", hint="each line is {'at': seconds, 'readings': {...}}"
            ) from err
        if samples and float(at) < samples[-1].at:
            raise ReplayError(f"{origin}:{number}: time goes backwards ({at} < {samples[-1].at})")
        samples.append(Sample.build(float(at), readings))
    if not samples:
        raise ReplayError(f"{origin}: the recording has no samples")
    return samples


def record_samples(samples: Iterable[Sample], stream: IO[str]) -> int:
    """Append samples to a JSONL stream in the format `ReplaySource` reads; returns how many."""
    count = 0
    for sample in samples:
        stream.write(json.dumps(sample.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


class ReplaySource:
    """A real `Probe` whose readings come from a recording instead of the machine."""

    def __init__(self, samples: Sequence[Sample], *, name: str = "replay", loop: bool = False) -> None:
        if not samples:
            raise ReplayError("a replay needs at least one sample")
        self.name = name
        self._samples = list(samples)
        self._loop = loop
        self._index = 0
        self._current: Sample | None = None
        self._loops = 0

    @classmethod
    def from_file(cls, path: Path, *, name: str | None = None, loop: bool = False) -> ReplaySource:
        """Load a `.jsonl` recording."""
        try:
            with path.open(encoding="utf-8") as handle:
                samples = parse_stream(handle, origin=str(path))
        except OSError as err:
            raise ReplayError(f"cannot read {path}: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise ReplayError(f"{path} is not UTF-8 text") from err
        return cls(samples, name=name or path.stem, loop=loop)

    @property
    def remaining(self) -> int:
        """Lines not yet played in this pass."""
        return len(self._samples) - self._index

    @property
    def duration_s(self) -> float:
        """Recorded time from the first to the last line."""
        return self._samples[-1].at - self._samples[0].at

    def clock(self) -> float:
        """The recorded time of the line last read (shifted by whole passes when looping)."""
        if self._current is None:
            return self._samples[0].at
        return self._current.at + self._loops * (self.duration_s + 1.0)

    async def read(self) -> Sequence[Reading]:
        """The readings of the next recorded line."""
        if self._index >= len(self._samples):
            if not self._loop:
                raise ReplayExhaustedError(f"replay {self.name}: all {len(self._samples)} samples played")
            self._index = 0
            self._loops += 1
        self._current = self._samples[self._index]
        self._index += 1
        return list(self._current.readings.values())

    async def aclose(self) -> None:
        """Nothing to release."""
