"""The monitor's settings: sampling cadence, history, retention, health checks and the rules.

The defaults are the seed's thresholds (CPU > 80 % pauses admission, RAM > 90 % unloads idle
models, VRAM > 95 % routes to smaller models, disk > 85 % cleans caches and old logs, GPU
over-temperature alerts), each with a duration and a lower clear level so a value hovering at the
threshold does not flap the action on and off.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ActionName = Literal["pause_admission", "unload_idle_models", "prefer_smaller_models", "clean_disk", "alert"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class RuleSettings(_Section):
    """One threshold: fire after `metric` stays above `above` for `for_s` seconds, clear after it
    stays below `clear_below` for `clear_for_s` seconds. `metric` may be a glob (`disk.*.percent`);
    the highest matching reading counts."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")
    metric: str = Field(min_length=1, max_length=200)
    above: float
    clear_below: float
    for_s: float = Field(default=0.0, ge=0, le=86_400)
    clear_for_s: float = Field(default=0.0, ge=0, le=86_400)
    action: ActionName
    severity: Literal["warning", "critical"] = "warning"

    @model_validator(mode="after")
    def _hysteresis(self) -> RuleSettings:
        if self.clear_below > self.above:
            raise ValueError(f"rule {self.name}: clear_below ({self.clear_below}) must not exceed above ({self.above})")
        return self

    def matches(self, reading_name: str) -> bool:
        """Whether a reading belongs to this rule's metric."""
        if any(char in self.metric for char in "*?["):
            return fnmatch.fnmatchcase(reading_name, self.metric)
        return reading_name == self.metric


DEFAULT_RULES: tuple[RuleSettings, ...] = (
    RuleSettings(
        name="cpu_high",
        metric="cpu.percent",
        above=80,
        clear_below=70,
        for_s=30,
        clear_for_s=30,
        action="pause_admission",
    ),
    RuleSettings(
        name="ram_high",
        metric="ram.percent",
        above=90,
        clear_below=85,
        for_s=10,
        clear_for_s=30,
        action="unload_idle_models",
    ),
    RuleSettings(
        name="vram_high",
        metric="gpu.*.vram_percent",
        above=95,
        clear_below=90,
        for_s=5,
        clear_for_s=30,
        action="prefer_smaller_models",
    ),
    RuleSettings(
        name="disk_high",
        metric="disk.*.percent",
        above=85,
        clear_below=80,
        for_s=60,
        clear_for_s=60,
        action="clean_disk",
    ),
    RuleSettings(
        name="gpu_hot",
        metric="gpu.*.temp_c",
        above=85,
        clear_below=78,
        for_s=10,
        clear_for_s=30,
        action="alert",
        severity="critical",
    ),
)


class RetentionSettings(_Section):
    """What `clean_disk` may delete, all of it inside the data directory."""

    cache_max_age_days: float = Field(default=3.0, ge=0)
    logs_max_age_days: float = Field(default=14.0, ge=0)
    metric_history_days: float = Field(default=30.0, gt=0)
    resolved_incident_days: float = Field(default=90.0, gt=0)


class MonitorSettings(_Section):
    """Sampling, history, health checks and rules of the system monitor."""

    enabled: bool = True
    interval_s: float = Field(default=1.0, ge=0.05, le=60)
    history_s: float = Field(default=3600.0, ge=60, le=86_400)
    downsample_s: float = Field(default=60.0, ge=1, le=3600)
    history_exclude: tuple[str, ...] = ("cpu.core.*", "gpu.*.proc.*")
    latency_every_s: float = Field(default=10.0, ge=1, le=3600)
    health_interval_s: float = Field(default=10.0, ge=0.05, le=600)
    health_timeout_s: float = Field(default=5.0, gt=0, le=120)
    restart_after_failures: int = Field(default=2, ge=1, le=100)
    max_restarts_per_hour: int = Field(default=5, ge=0, le=1000)
    action_timeout_s: float = Field(default=30.0, gt=0, le=600)
    rules: tuple[RuleSettings, ...] = DEFAULT_RULES
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @model_validator(mode="after")
    def _unique_rule_names(self) -> MonitorSettings:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        return self
