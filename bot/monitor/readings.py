"""What a probe reports: named readings that are either a number or an honest "unavailable".

A reading that cannot be taken is never a zero: it is `available=False` with the reason, so a
chart shows a gap and a rule neither fires nor clears on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict


class ReadingJSON(TypedDict, total=False):
    """One reading on the wire (samples JSONL, WebSocket): a value or the reason there is none."""

    value: float
    unit: str
    unavailable: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement (`cpu.percent`, `gpu.0.temp_c`, …) or why it could not be made."""

    name: str
    value: float | None
    unit: str = ""
    available: bool = True
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.available and (self.value is None or not math.isfinite(self.value)):
            raise ValueError(f"reading {self.name!r} is marked available but has no finite value")
        if not self.available and (self.value is not None or not self.reason):
            raise ValueError(f"unavailable reading {self.name!r} needs a reason and no value")

    @classmethod
    def of(cls, name: str, value: float, unit: str = "") -> Reading:
        """A measured value."""
        return cls(name=name, value=float(value), unit=unit)

    @classmethod
    def unavailable(cls, name: str, reason: str, unit: str = "") -> Reading:
        """A reading that could not be taken, with the reason a person can act on."""
        return cls(name=name, value=None, unit=unit, available=False, reason=reason)

    def to_json(self) -> ReadingJSON:
        """The wire form used by the JSONL recordings and the live stream."""
        if self.available and self.value is not None:
            return ReadingJSON(value=self.value, unit=self.unit)
        return ReadingJSON(unavailable=self.reason or "unavailable", unit=self.unit)

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any] | float | int) -> Reading:
        """Parse the wire form; a bare number is accepted as a unit-less value."""
        if isinstance(data, int | float) and not isinstance(data, bool):
            return cls.of(name, float(data))
        if not isinstance(data, Mapping):
            raise ValueError(f"reading {name!r}: expected a number or an object, got {type(data).__name__}")
        unit = str(data.get("unit", ""))
        if "unavailable" in data:
            return cls.unavailable(name, str(data["unavailable"]), unit)
        value = data.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"reading {name!r}: 'value' must be a number")
        if not math.isfinite(float(value)):
            raise ValueError(f"reading {name!r}: 'value' must be finite")
        return cls.of(name, float(value), unit)


@dataclass(frozen=True, slots=True)
class Sample:
    """Every reading taken at one tick, stamped with wall-clock time (unix seconds)."""

    at: float
    readings: Mapping[str, Reading] = field(default_factory=dict)

    @classmethod
    def build(cls, at: float, readings: Iterable[Reading]) -> Sample:
        """A sample from a list of readings (a later reading of the same name wins)."""
        return cls(at=at, readings={reading.name: reading for reading in readings})

    def value(self, name: str) -> float | None:
        """The value of one reading, None when absent or unavailable."""
        reading = self.readings.get(name)
        return reading.value if reading is not None and reading.available else None

    def to_json(self) -> dict[str, Any]:
        """The sample as JSON-ready data (one JSONL line, one WebSocket message)."""
        return {"at": self.at, "readings": {n: r.to_json() for n, r in sorted(self.readings.items())}}
