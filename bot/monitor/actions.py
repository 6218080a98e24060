"""What a rule does when it fires, and how it is undone when the condition clears.

Actions act through the real seams: the published `MonitorState` the queue's admission hook and
the router read, the provider port's `list_models`/`unload`, and the file system inside the data
directory only. `apply` and `undo` return a short sentence of what happened, which goes into the
incident's action log and the alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bot.engine.providers.port import LLMProvider, ProviderError
from bot.logs import get_logger
from bot.monitor.config import RetentionSettings, RuleSettings
from bot.monitor.state import MonitorState

log = get_logger(__name__)

ProviderSource = Callable[[], Iterable[LLMProvider]]


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why an action runs: the rule, the reading that crossed, its value, and when."""

    rule: RuleSettings
    reading: str
    value: float
    at: float


class Action(Protocol):
    """Something a rule does on firing and reverts on clearing (both idempotent)."""

    name: str

    async def apply(self, trigger: Trigger) -> str:
        """Act; returns what was done."""
        ...

    async def undo(self, trigger: Trigger) -> str:
        """Revert; returns what was done."""
        ...


class PauseAdmission:
    """Stops the queue from starting new tasks (running ones finish); resumes on clear."""

    name = "pause_admission"

    def __init__(self, state: MonitorState, *, on_resume: Callable[[], None] | None = None) -> None:
        self._state = state
        self._on_resume = on_resume

    async def apply(self, trigger: Trigger) -> str:
        """Close admission."""
        self._state.admission_paused = True
        self._state.admission_reason = f"{trigger.reading} at {trigger.value:.1f} > {trigger.rule.above:g}"
        return "new tasks are not admitted; running tasks continue"

    async def undo(self, trigger: Trigger) -> str:
        """Reopen admission."""
        self._state.admission_paused = False
        self._state.admission_reason = None
        if self._on_resume is not None:
            self._on_resume()  # e.g. Worker.wake: claim at once instead of at the next poll
        return "admission of new tasks resumed"


class PreferSmallerModels:
    """Asks the router to pick the smallest adequate model while VRAM is nearly full."""

    name = "prefer_smaller_models"

    def __init__(self, state: MonitorState) -> None:
        self._state = state

    async def apply(self, trigger: Trigger) -> str:
        """Raise the router's preference flag."""
        self._state.prefer_smaller_models = True
        self._state.prefer_smaller_reason = f"{trigger.reading} at {trigger.value:.1f} > {trigger.rule.above:g}"
        return "routing prefers smaller models"

    async def undo(self, trigger: Trigger) -> str:
        """Drop the preference."""
        self._state.prefer_smaller_models = False
        self._state.prefer_smaller_reason = None
        return "routing back to the usual model choice"


class UnloadIdleModels:
    """Unloads every loaded model no request is using, on each local provider."""

    name = "unload_idle_models"

    def __init__(self, *, state: MonitorState, providers: ProviderSource) -> None:
        self._state = state
        self._providers = providers

    async def apply(self, trigger: Trigger) -> str:
        """Unload idle models and flag memory pressure (the loader should not load more)."""
        self._state.memory_pressure = True
        self._state.memory_pressure_reason = f"{trigger.reading} at {trigger.value:.1f} > {trigger.rule.above:g}"
        unloaded: list[str] = []
        kept: list[str] = []
        problems: list[str] = []
        for provider in self._providers():
            if not provider.is_local:
                continue  # a remote server's memory is not this machine's RAM
            try:
                models = await provider.list_models(refresh=True)
            except ProviderError as err:
                problems.append(f"{provider.name}: cannot list models ({err.message})")
                continue
            busy = self._state.models_in_use(provider.name)
            for model in models:
                if not model.loaded:
                    continue
                if model.key in busy:
                    kept.append(f"{provider.name}/{model.key}")
                    continue
                try:
                    await provider.unload(model.key)
                except ProviderError as err:
                    problems.append(f"{provider.name}/{model.key}: {err.message}")
                else:
                    unloaded.append(f"{provider.name}/{model.key}")
                    log.info("unloaded idle model", provider=provider.name, model=model.key, rule=trigger.rule.name)
        parts = [f"unloaded {', '.join(unloaded)}" if unloaded else "no idle model was loaded"]
        if kept:
            parts.append(f"kept busy {', '.join(kept)}")
        if problems:
            parts.append(f"failed: {'; '.join(problems)}")
        return "; ".join(parts)

    async def undo(self, trigger: Trigger) -> str:
        """Lift the memory-pressure flag; models load again on demand."""
        self._state.memory_pressure = False
        self._state.memory_pressure_reason = None
        return "memory pressure cleared; models load again on demand"


@dataclass(frozen=True, slots=True)
class CleanReport:
    """What a clean-up removed."""

    files: int
    bytes: int
    refused: tuple[str, ...] = ()


def clean_data_dir(*, data_dir: Path, retention: RetentionSettings, now: float | None = None) -> CleanReport:
    """Delete cache files and logs older than their retention, strictly inside `data_dir`.

    Symbolic links are removed as links, never followed; a `cache` or `logs` entry that is itself
    a link (which could point anywhere) is refused, not entered.
    """
    root = data_dir.resolve()
    moment = time.time() if now is None else now
    files = 0
    freed = 0
    refused: list[str] = []
    for sub, max_age_days in (("cache", retention.cache_max_age_days), ("logs", retention.logs_max_age_days)):
        target = root / sub
        if target.is_symlink():
            refused.append(f"{target} is a symbolic link")
            continue
        if not target.is_dir():
            continue
        cutoff = moment - max_age_days * 86_400
        for directory, dirnames, filenames in os.walk(target, topdown=False, followlinks=False):
            here = Path(directory)
            if not here.resolve().is_relative_to(root):
                refused.append(f"{here} is outside {root}")
                continue
            for filename in filenames:
                path = here / filename
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)) or info.st_mtime >= cutoff:
                    continue
                try:
                    path.unlink()
                except OSError as err:
                    refused.append(f"{path}: {err.strerror}")
                    continue
                files += 1
                freed += info.st_size if stat.S_ISREG(info.st_mode) else 0
            for dirname in dirnames:
                with_path = here / dirname
                if not with_path.is_symlink():
                    with contextlib.suppress(OSError):
                        with_path.rmdir()  # only succeeds when now empty
    return CleanReport(files=files, bytes=freed, refused=tuple(refused))


class CleanDisk:
    """Deletes expired caches and old logs in the data directory under the retention policy."""

    name = "clean_disk"

    def __init__(self, *, data_dir: Path, retention: RetentionSettings) -> None:
        self._data_dir = data_dir
        self._retention = retention

    async def apply(self, trigger: Trigger) -> str:
        """Clean now (in a thread: walking a big cache must not stall the event loop)."""
        report = await asyncio.to_thread(clean_data_dir, data_dir=self._data_dir, retention=self._retention)
        text = f"deleted {report.files} files ({report.bytes / 1_048_576:.1f} MiB) from cache/ and logs/"
        if report.refused:
            text += f"; left alone: {'; '.join(report.refused[:5])}"
        return text

    async def undo(self, trigger: Trigger) -> str:
        """Deleted files stay deleted; clearing only closes the incident."""
        return "disk usage back under the threshold"


class AlertOnly:
    """No automatic remedy: the alert itself is the action (e.g. GPU over-temperature)."""

    name = "alert"

    async def apply(self, trigger: Trigger) -> str:
        """Nothing to change."""
        return "alert sent; no automatic action"

    async def undo(self, trigger: Trigger) -> str:
        """Nothing to revert."""
        return "condition cleared"
