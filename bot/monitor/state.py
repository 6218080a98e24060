"""What the monitor publishes for the rest of the daemon to read: the queue, the router, /status.

The monitor never reaches into the router or the worker; it sets flags here and they read them
(the queue's admission hook, the router's model choice). Each flag carries why it is set, so a
person asking "why is nothing starting?" gets the reason, not just a boolean.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from bot.monitor.readings import Sample


@dataclass
class MonitorState:
    """Flags the rules set and the engine reads; mutated only by the monitor's actions."""

    admission_paused: bool = False
    admission_reason: str | None = None
    prefer_smaller_models: bool = False
    prefer_smaller_reason: str | None = None
    memory_pressure: bool = False
    memory_pressure_reason: str | None = None
    latest: Sample | None = None
    _models_in_use: Counter[tuple[str, str]] = field(default_factory=Counter)

    def admit(self) -> bool:
        """Whether the queue may start another task now (the worker's admission hook)."""
        return not self.admission_paused

    @contextlib.contextmanager
    def using_model(self, provider: str, model: str) -> Iterator[None]:
        """Mark a model busy while a request runs on it, so the RAM rule never unloads it."""
        key = (provider, model)
        self._models_in_use[key] += 1
        try:
            yield
        finally:
            self._models_in_use[key] -= 1
            if self._models_in_use[key] <= 0:
                del self._models_in_use[key]

    def models_in_use(self, provider: str) -> frozenset[str]:
        """Models of one provider with a request in flight."""
        return frozenset(model for (name, model), count in self._models_in_use.items() if name == provider and count)

    def as_json(self) -> dict[str, object]:
        """The flags for /status and the admin API."""
        return {
            "admission_paused": self.admission_paused,
            "admission_reason": self.admission_reason,
            "prefer_smaller_models": self.prefer_smaller_models,
            "prefer_smaller_reason": self.prefer_smaller_reason,
            "memory_pressure": self.memory_pressure,
            "memory_pressure_reason": self.memory_pressure_reason,
        }
