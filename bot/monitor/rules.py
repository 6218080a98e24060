"""Threshold rules with a duration and hysteresis, and what happens when one fires or clears.

A rule moves idle → pending (value above the threshold, waiting `for_s`) → active (action applied,
incident opened, alert sent) → clearing (value below `clear_below`, waiting `clear_for_s`) → idle
(action undone, incident and alert resolved). Between `clear_below` and `above` nothing changes,
so a value hovering at the threshold cannot flap the action. Time is the samples' own timestamps,
so a recorded stream replays with the same timing it was recorded with. An unavailable reading
never moves a rule: no data is not "below the threshold".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.db.models.enums import Severity
from bot.events import Event
from bot.logs import get_logger
from bot.monitor.actions import Action, Trigger
from bot.monitor.config import RuleSettings
from bot.monitor.readings import Sample
from bot.monitor.store import MonitorStore

log = get_logger(__name__)

ALERT_TOPIC = "monitor"


class Phase(StrEnum):
    """Where a rule is in its cycle."""

    IDLE = "idle"
    PENDING = "pending"
    ACTIVE = "active"
    CLEARING = "clearing"


@dataclass
class RuleState:
    """One rule's progress; `since` is when the current pending/clearing wait began."""

    phase: Phase = Phase.IDLE
    since: float | None = None
    trigger: Trigger | None = None
    incident_id: int | None = None
    last_value: float | None = None
    last_reading: str | None = None
    unavailable_reason: str | None = None


_TITLES: dict[str, dict[str, tuple[str, str]]] = {
    # action: {language: (fired, cleared)}
    "pause_admission": {
        "en": ("High CPU: new tasks are paused", "CPU back to normal: new tasks are admitted again"),
        "pt-BR": ("CPU alta: novas tarefas estão pausadas", "CPU normalizada: novas tarefas voltam a ser aceitas"),
    },
    "unload_idle_models": {
        "en": ("High RAM: idle models unloaded", "RAM back to normal"),
        "pt-BR": ("RAM alta: modelos ociosos descarregados", "RAM normalizada"),
    },
    "prefer_smaller_models": {
        "en": ("VRAM nearly full: routing to smaller models", "VRAM back to normal: usual model choice"),
        "pt-BR": ("VRAM quase cheia: usando modelos menores", "VRAM normalizada: escolha de modelos habitual"),
    },
    "clean_disk": {
        "en": ("Disk nearly full: caches and old logs cleaned", "Disk usage back to normal"),
        "pt-BR": ("Disco quase cheio: caches e logs antigos limpos", "Uso de disco normalizado"),
    },
    "alert": {
        "en": ("Threshold exceeded", "Back under the threshold"),
        "pt-BR": ("Limite ultrapassado", "De volta abaixo do limite"),
    },
}

_GPU_HOT = {
    "en": ("GPU over temperature", "GPU temperature back to normal"),
    "pt-BR": ("GPU acima da temperatura", "Temperatura da GPU normalizada"),
}


def alert_messages(*, trigger: Trigger, fired: bool, outcome: str) -> dict[str, str]:
    """The alert text in every product language (English and Brazilian Portuguese)."""
    titles = (
        _GPU_HOT
        if trigger.reading.endswith("temp_c") and trigger.rule.action == "alert"
        else (_TITLES[trigger.rule.action])
    )
    index = 0 if fired else 1
    rule = trigger.rule
    if fired:
        en = f"{titles['en'][index]} — {trigger.reading} = {trigger.value:.1f} (limit {rule.above:g}). {outcome}"
        pt = (
            f"{titles['pt-BR'][index]} — {trigger.reading} = {trigger.value:.1f} (limite {rule.above:g}). "
            f"Ação: {outcome}"
        )
    else:
        en = f"{titles['en'][index]} — {trigger.reading} below {rule.clear_below:g}. {outcome}"
        pt = f"{titles['pt-BR'][index]} — {trigger.reading} abaixo de {rule.clear_below:g}. Ação: {outcome}"
    return {"en": en, "pt-BR": pt}


@dataclass(frozen=True, slots=True)
class AlertNotice:
    """An alert as chat platforms and the WebSocket receive it."""

    rule: str
    state: str  # "fired" or "cleared"
    severity: str
    reading: str
    value: float | None
    messages: Mapping[str, str]
    outcome: str
    incident_id: int | None
    alert_id: int | None
    chart_metrics: tuple[str, ...]
    at: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        """JSON-ready form (the event payload)."""
        return {
            "rule": self.rule,
            "state": self.state,
            "severity": self.severity,
            "reading": self.reading,
            "value": self.value,
            "messages": dict(self.messages),
            "outcome": self.outcome,
            "incident_id": self.incident_id,
            "alert_id": self.alert_id,
            "chart_metrics": list(self.chart_metrics),
            "at": self.at,
        }


AlertCallback = Callable[[AlertNotice], Awaitable[None]]
Publish = Callable[[Event], None]


class RuleEngine:
    """Evaluates every rule on each sample and runs the transitions they cause, in order."""

    def __init__(
        self,
        *,
        rules: Sequence[RuleSettings],
        actions: Mapping[str, Action],
        store: MonitorStore | None = None,
        publish: Publish | None = None,
        on_alert: AlertCallback | None = None,
        action_timeout_s: float = 30.0,
    ) -> None:
        missing = sorted({rule.action for rule in rules} - set(actions))
        if missing:
            raise ValueError(f"no action registered for: {', '.join(missing)}")
        self.rules = list(rules)
        self.states: dict[str, RuleState] = {rule.name: RuleState() for rule in rules}
        self._actions = dict(actions)
        self._store = store
        self._publish = publish
        self._on_alert = on_alert
        self._action_timeout_s = action_timeout_s
        self._lock = asyncio.Lock()
        self.notices: list[AlertNotice] = []

    @staticmethod
    def _observe(rule: RuleSettings, sample: Sample) -> tuple[str | None, float | None, str | None]:
        """(reading name, value) of the highest matching available reading, or why there is none."""
        best_name: str | None = None
        best_value: float | None = None
        reason: str | None = None
        for name, reading in sample.readings.items():
            if not rule.matches(name):
                continue
            if not reading.available or reading.value is None:
                reason = reason or reading.reason
                continue
            if best_value is None or reading.value > best_value:
                best_name, best_value = name, reading.value
        return best_name, best_value, reason

    async def process(self, sample: Sample) -> list[AlertNotice]:
        """Advance every rule with one sample; returns the alerts this sample caused."""
        async with self._lock:  # transitions of consecutive samples never interleave
            notices: list[AlertNotice] = []
            for rule in self.rules:
                notice = await self._advance(rule, sample)
                if notice is not None:
                    notices.append(notice)
            return notices

    async def _advance(self, rule: RuleSettings, sample: Sample) -> AlertNotice | None:
        state = self.states[rule.name]
        name, value, reason = self._observe(rule, sample)
        if value is None or name is None:
            state.unavailable_reason = reason or "no matching reading"
            return None
        state.unavailable_reason = None
        state.last_value, state.last_reading = value, name
        now = sample.at
        if state.phase in (Phase.IDLE, Phase.PENDING):
            if value <= rule.above:
                state.phase, state.since = Phase.IDLE, None
                return None
            if state.phase is Phase.IDLE:
                state.phase, state.since = Phase.PENDING, now
            if state.since is not None and now - state.since >= rule.for_s:
                return await self._fire(rule, state, Trigger(rule=rule, reading=name, value=value, at=now))
            return None
        # ACTIVE or CLEARING
        if value >= rule.clear_below:
            state.phase, state.since = Phase.ACTIVE, None
            return None
        if state.phase is Phase.ACTIVE:
            state.phase, state.since = Phase.CLEARING, now
        if state.since is not None and now - state.since >= rule.clear_for_s:
            return await self._clear(rule, state, name, value, now)
        return None

    async def _run_action(self, action: Action, method: str, trigger: Trigger) -> tuple[bool, str]:
        call = action.apply if method == "apply" else action.undo
        try:
            async with asyncio.timeout(self._action_timeout_s):
                return True, await call(trigger)
        except TimeoutError:
            return False, f"{action.name}.{method} did not finish within {self._action_timeout_s:g} s"
        except Exception as err:  # action boundary: a failed remedy is reported, never crashes the monitor
            log.exception("monitor action failed", action=action.name, method=method)
            return False, f"{action.name}.{method} failed: {type(err).__name__}: {err}"

    async def _fire(self, rule: RuleSettings, state: RuleState, trigger: Trigger) -> AlertNotice:
        state.phase, state.since, state.trigger = Phase.ACTIVE, None, trigger
        action = self._actions[rule.action]
        ok, outcome = await self._run_action(action, "apply", trigger)
        log.warning("monitor rule fired", rule=rule.name, reading=trigger.reading, value=trigger.value, outcome=outcome)
        incident_id = alert_id = None
        messages = alert_messages(trigger=trigger, fired=True, outcome=outcome)
        if self._store is not None:
            try:
                incident_id, alert_id = await self._record_fire(rule, trigger, action.name, outcome, ok, messages)
            except Exception as err:  # recording boundary: a down database must not silence the alert
                log.warning("cannot record rule incident", rule=rule.name, error=f"{type(err).__name__}: {err}")
        state.incident_id = incident_id
        notice = AlertNotice(
            rule=rule.name,
            state="fired",
            severity=rule.severity,
            reading=trigger.reading,
            value=trigger.value,
            messages=messages,
            outcome=outcome,
            incident_id=incident_id,
            alert_id=alert_id,
            chart_metrics=(trigger.reading,),
        )
        await self._announce(notice)
        return notice

    async def _clear(self, rule: RuleSettings, state: RuleState, name: str, value: float, now: float) -> AlertNotice:
        trigger = state.trigger or Trigger(rule=rule, reading=name, value=value, at=now)
        action = self._actions[rule.action]
        ok, outcome = await self._run_action(action, "undo", trigger)
        log.info("monitor rule cleared", rule=rule.name, reading=name, value=value, outcome=outcome)
        messages = alert_messages(
            trigger=Trigger(rule=rule, reading=name, value=value, at=now), fired=False, outcome=outcome
        )
        alert_id = None
        if self._store is not None:
            try:
                alert_id = await self._record_clear(rule, state.incident_id, action.name, outcome, ok, name, value)
            except Exception as err:  # recording boundary: a down database must not silence the alert
                log.warning("cannot record rule resolution", rule=rule.name, error=f"{type(err).__name__}: {err}")
        notice = AlertNotice(
            rule=rule.name,
            state="cleared",
            severity="info",
            reading=name,
            value=value,
            messages=messages,
            outcome=outcome,
            incident_id=state.incident_id,
            alert_id=alert_id,
            chart_metrics=(name,),
        )
        state.phase, state.since, state.trigger, state.incident_id = Phase.IDLE, None, None, None
        await self._announce(notice)
        return notice

    async def _record_fire(
        self,
        rule: RuleSettings,
        trigger: Trigger,
        action_name: str,
        outcome: str,
        ok: bool,
        messages: Mapping[str, str],
    ) -> tuple[int, int]:
        assert self._store is not None
        severity = Severity(rule.severity)
        incident_id = await self._store.open_incident(
            kind=f"monitor.{rule.name}",
            title=messages["en"][:255],
            description=f"{trigger.reading} = {trigger.value:.2f} stayed above {rule.above:g} for {rule.for_s:g} s",
            severity=severity,
            details={"rule": rule.model_dump(), "reading": trigger.reading, "value": trigger.value},
        )
        await self._store.add_incident_action(incident_id, action=action_name, outcome=outcome, ok=ok, mitigated=ok)
        alert_id, _ = await self._store.raise_alert(
            kind=f"monitor.{rule.name}",
            dedupe_key=f"monitor:{rule.name}",
            message=messages["en"],
            severity=severity,
            data={
                "messages": dict(messages),
                "reading": trigger.reading,
                "value": trigger.value,
                "incident_id": incident_id,
            },
        )
        await self._store.link_alert(incident_id, alert_id)
        return incident_id, alert_id

    async def _record_clear(
        self,
        rule: RuleSettings,
        incident_id: int | None,
        action_name: str,
        outcome: str,
        ok: bool,
        reading: str,
        value: float,
    ) -> int | None:
        assert self._store is not None
        if incident_id is not None:
            await self._store.add_incident_action(incident_id, action=f"undo {action_name}", outcome=outcome, ok=ok)
            await self._store.resolve_incident(
                incident_id, outcome=f"{reading} = {value:.2f} below {rule.clear_below:g}"
            )
        return await self._store.resolve_alert(f"monitor:{rule.name}")

    async def _announce(self, notice: AlertNotice) -> None:
        self.notices.append(notice)
        del self.notices[:-100]
        if self._publish is not None:
            kind = "alert" if notice.state == "fired" else "alert_cleared"
            self._publish(Event(topic=ALERT_TOPIC, kind=kind, payload=notice.as_json()))
        if self._on_alert is not None:
            try:
                await self._on_alert(notice)
            except Exception:  # notifier boundary: a chat outage must not stop the rules
                log.exception("alert notification failed", rule=notice.rule)

    def snapshot(self) -> list[dict[str, Any]]:
        """Each rule's phase and last value (for /status and the admin API)."""
        return [
            {
                "rule": rule.name,
                "metric": rule.metric,
                "phase": self.states[rule.name].phase.value,
                "last_reading": self.states[rule.name].last_reading,
                "last_value": self.states[rule.name].last_value,
                "unavailable": self.states[rule.name].unavailable_reason,
                "above": rule.above,
                "clear_below": rule.clear_below,
                "action": rule.action,
            }
            for rule in self.rules
        ]
