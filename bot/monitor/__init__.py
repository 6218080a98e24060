"""The system monitor: probes, 1 Hz sampling, threshold rules that act, history, health checks.

Errors (rooted at bot.errors.OrchestratorError):

    ReplayError                 a recorded sample stream cannot be read
    └── ReplayExhaustedError    every recorded line has been played (looping off)

Probe failures are not errors to callers: they become unavailable readings with a reason.
See docs/monitor.md.
"""

from bot.monitor.config import DEFAULT_RULES, MonitorSettings, RetentionSettings, RuleSettings
from bot.monitor.health import CheckResult, HealthCheck, HealthMonitor, HealthReport
from bot.monitor.monitor import Monitor
from bot.monitor.probes import Probe
from bot.monitor.readings import Reading, Sample
from bot.monitor.replay import ReplayError, ReplayExhaustedError, ReplaySource
from bot.monitor.rules import AlertNotice, RuleEngine
from bot.monitor.state import MonitorState

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
