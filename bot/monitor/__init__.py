"""The system monitor: probes, 1 Hz sampling, threshold rules that act, history, health checks.

Errors (rooted at bot.errors.OrchestratorError):

    ReplayError                 a recorded sample stream cannot be read
    └── ReplayExhaustedError    every recorded line has been played (looping off)

Probe failures are not errors to callers: they become unavailable readings with a reason.
See docs/monitor.md.

The names below are loaded on first use, so `bot.settings` can import `bot.monitor.config`
without pulling in the database layer (which itself imports the settings).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.monitor.config import DEFAULT_RULES, MonitorSettings, RetentionSettings, RuleSettings
    from bot.monitor.health import CheckResult, HealthCheck, HealthMonitor, HealthReport
    from bot.monitor.monitor import Monitor
    from bot.monitor.probes import Probe
    from bot.monitor.readings import Reading, Sample
    from bot.monitor.replay import ReplayError, ReplayExhaustedError, ReplaySource
    from bot.monitor.rules import AlertNotice, RuleEngine
    from bot.monitor.state import MonitorState

_EXPORTS = {
    "DEFAULT_RULES": "config",
    "MonitorSettings": "config",
    "RetentionSettings": "config",
    "RuleSettings": "config",
    "CheckResult": "health",
    "HealthCheck": "health",
    "HealthMonitor": "health",
    "HealthReport": "health",
    "Monitor": "monitor",
    "Probe": "probes",
    "Reading": "readings",
    "Sample": "readings",
    "ReplayError": "replay",
    "ReplayExhaustedError": "replay",
    "ReplaySource": "replay",
    "AlertNotice": "rules",
    "RuleEngine": "rules",
    "MonitorState": "state",
}

__all__ = [
    "DEFAULT_RULES",
    "AlertNotice",
    "CheckResult",
    "HealthCheck",
    "HealthMonitor",
    "HealthReport",
    "Monitor",
    "MonitorSettings",
    "MonitorState",
    "Probe",
    "Reading",
    "ReplayError",
    "ReplayExhaustedError",
    "ReplaySource",
    "RetentionSettings",
    "RuleEngine",
    "RuleSettings",
    "Sample",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bot.monitor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bot.monitor.{module}"), name)
    globals()[name] = value
    return value
