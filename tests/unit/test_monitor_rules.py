"""Rules driven by recorded sample streams: duration, hysteresis, failing probes, absent NVML."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from bot.monitor.actions import AlertOnly, CleanDisk, PauseAdmission, PreferSmallerModels, UnloadIdleModels
from bot.monitor.config import DEFAULT_RULES, MonitorSettings, RuleSettings
from bot.monitor.probes import LLMProcessProbe, NvmlProbe, PsutilProbe
from bot.monitor.readings import Reading, Sample
from bot.monitor.replay import ReplayExhaustedError, ReplaySource
from bot.monitor.rules import AlertNotice, Phase, RuleEngine
from bot.monitor.sampler import Sampler
from bot.monitor.state import MonitorState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "monitor"


def engine_for(state: MonitorState, tmp_path: Path, rules: tuple[RuleSettings, ...] = DEFAULT_RULES) -> RuleEngine:
    return RuleEngine(
        rules=rules,
        actions={
            "pause_admission": PauseAdmission(state),
            "unload_idle_models": UnloadIdleModels(state=state, providers=tuple),
            "prefer_smaller_models": PreferSmallerModels(state),
            "clean_disk": CleanDisk(data_dir=tmp_path, retention=MonitorSettings().retention),
            "alert": AlertOnly(),
        },
    )


async def replay(name: str, engine: RuleEngine) -> list[tuple[float, AlertNotice]]:
    """Play a whole recording through a real sampler into the engine; (offset s, notice) pairs."""
    source = ReplaySource.from_file(FIXTURES / f"{name}.jsonl")
    sampler = Sampler(probes=[source], interval_s=1.0, clock=source.clock)
    start: float | None = None
    seen: list[tuple[float, AlertNotice]] = []
    while source.remaining:
        sample = await sampler.sample_once()
        start = sample.at if start is None else start
        seen += [(sample.at - start, notice) for notice in await engine.process(sample)]
    return seen


async def test_cpu_rule_fires_after_its_duration_and_clears_only_below_the_band(tmp_path: Path) -> None:
    state = MonitorState()
    engine = engine_for(state, tmp_path)
    notices = await replay("cpu_spike", engine)
    # 92 % from t=5: pending 30 s → fires at t=35. 75 % (t=45..59) is inside the 70–80 band: stays
    # active. 50 % from t=60: clearing 30 s → clears at t=90. Exactly one fire and one clear.
    assert [(offset, n.rule, n.state) for offset, n in notices] == [
        (35.0, "cpu_high", "fired"),
        (90.0, "cpu_high", "cleared"),
    ]
    fired = notices[0][1]
    assert fired.value == 92.0
    assert "pausadas" in fired.messages["pt-BR"]
    assert "paused" in fired.messages["en"]
    assert state.admission_paused is False  # undone at the clear
    assert engine.states["cpu_high"].phase is Phase.IDLE


async def test_admission_is_paused_between_fire_and_clear(tmp_path: Path) -> None:
    state = MonitorState()
    engine = engine_for(state, tmp_path)
    source = ReplaySource.from_file(FIXTURES / "cpu_spike.jsonl")
    sampler = Sampler(probes=[source], clock=source.clock)
    admitted: list[bool] = []
    while source.remaining:
        await engine.process(await sampler.sample_once())
        admitted.append(state.admit())
    assert admitted[:35] == [True] * 35
    assert admitted[35:90] == [False] * 55
    assert admitted[90:] == [True] * 10


async def test_flapping_value_never_fires_a_rule_with_a_duration(tmp_path: Path) -> None:
    engine = engine_for(MonitorState(), tmp_path)
    assert await replay("cpu_flapping", engine) == []
    assert engine.states["cpu_high"].phase in (Phase.IDLE, Phase.PENDING)


async def test_hysteresis_keeps_an_immediate_rule_from_flapping(tmp_path: Path) -> None:
    immediate = RuleSettings(name="cpu_now", metric="cpu.percent", above=80, clear_below=70, action="pause_admission")
    engine = engine_for(MonitorState(), tmp_path, rules=(immediate,))
    notices = await replay("cpu_flapping", engine)
    # 85 fires at once; 78 is above the clear level, so it never clears: one alert, not twelve.
    assert [(offset, n.state) for offset, n in notices] == [(0.0, "fired")]


async def test_without_hysteresis_the_same_stream_flaps(tmp_path: Path) -> None:
    no_band = RuleSettings(name="cpu_now", metric="cpu.percent", above=80, clear_below=80, action="pause_admission")
    engine = engine_for(MonitorState(), tmp_path, rules=(no_band,))
    notices = await replay("cpu_flapping", engine)
    assert len(notices) == 12  # six 10-second periods above, six below: what the band prevents


async def test_glob_rules_take_the_worst_gpu_and_act(tmp_path: Path) -> None:
    state = MonitorState()
    engine = engine_for(state, tmp_path)
    notices = await replay("gpu_pressure", engine)
    summary = [(offset, n.rule, n.state) for offset, n in notices]
    assert (5.0, "vram_high", "fired") in summary
    assert (10.0, "gpu_hot", "fired") in summary
    hot = next(n for _o, n in notices if n.rule == "gpu_hot")
    assert hot.severity == "critical"
    assert hot.messages["en"].startswith("GPU over temperature")
    assert hot.reading == "gpu.0.temp_c"
    assert (50.0, "vram_high", "cleared") in summary
    assert state.prefer_smaller_models is False


async def test_vram_rule_sets_the_router_preference_while_active(tmp_path: Path) -> None:
    state = MonitorState()
    engine = engine_for(state, tmp_path)
    source = ReplaySource.from_file(FIXTURES / "gpu_pressure.jsonl")
    sampler = Sampler(probes=[source], clock=source.clock)
    flags = []
    while source.remaining:
        await engine.process(await sampler.sample_once())
        flags.append(state.prefer_smaller_models)
    assert flags[4] is False
    assert flags[5] is True
    assert flags[49] is True
    assert flags[50] is False
    assert state.prefer_smaller_reason is None


async def test_a_probe_that_raises_makes_its_readings_unavailable_and_rules_hold(tmp_path: Path) -> None:
    state = MonitorState()
    immediate = RuleSettings(name="cpu_now", metric="cpu.percent", above=80, clear_below=70, action="pause_admission")
    engine = engine_for(state, tmp_path, rules=(immediate,))
    source = ReplaySource.from_file(FIXTURES / "crossing.jsonl")
    sampler = Sampler(probes=[source, LLMProcessProbe()], clock=source.clock)
    while source.remaining:
        await engine.process(await sampler.sample_once())
    assert state.admission_paused is True
    # The recording is over: the replay probe now raises ReplayExhaustedError at every tick.
    with pytest.raises(ReplayExhaustedError):
        await source.read()
    sample = await sampler.sample_once()
    await engine.process(sample)
    cpu = sample.readings["cpu.percent"]
    assert cpu.available is False
    assert cpu.value is None
    assert cpu.reason is not None
    assert "ReplayExhaustedError" in cpu.reason
    assert "probe.crossing" in sample.readings
    assert sampler.failing_probes.keys() == {"crossing"}
    assert not sample.readings["ram.percent"].available  # every name the probe gave goes unavailable
    # Other probes keep working, and no data is not "below the threshold": the rule holds.
    assert sample.readings["proc.ollama.count"].available
    assert state.admission_paused is True
    assert engine.states["cpu_now"].unavailable_reason == cpu.reason


async def test_a_probe_that_hangs_times_out_without_stopping_the_tick() -> None:
    class Stuck:
        name = "stuck"

        async def read(self) -> list[Reading]:
            import asyncio

            await asyncio.Event().wait()
            return []

        async def aclose(self) -> None:
            return None

    sampler = Sampler(probes=[Stuck(), PsutilProbe()], interval_s=0.1)
    sample = await sampler.sample_once()
    reason = sample.readings["probe.stuck"].reason
    assert reason is not None
    assert "took longer" in reason
    assert sample.readings["ram.percent"].available


async def test_nvml_absent_is_unavailable_with_a_reason_never_zero() -> None:
    probe = NvmlProbe()
    readings = await probe.read()
    await probe.aclose()
    if any(r.name == "gpu.nvidia.count" for r in readings):  # a machine with an NVIDIA driver
        assert all(r.available or r.reason for r in readings)
        return
    assert len(readings) == 1
    (reading,) = readings
    assert reading.available is False
    assert reading.value is None
    assert reading.reason is not None
    assert "NVML" in reading.reason


async def test_nvml_bindings_missing_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # third-party module absent, as on a fresh box
    (reading,) = await NvmlProbe().read()
    assert not reading.available
    assert reading.reason is not None
    assert "nvidia-ml-py" in reading.reason


async def test_nvml_unavailable_reading_moves_no_rule(tmp_path: Path) -> None:
    state = MonitorState()
    engine = engine_for(state, tmp_path)
    notices = await replay("ram_pressure", engine)  # the recording has no GPU: NVML absent
    assert {n.rule for _o, n in notices} == {"ram_high"}
    assert engine.states["vram_high"].phase is Phase.IDLE
    assert engine.states["vram_high"].unavailable_reason in (None, "no matching reading")


async def test_real_host_recording_fires_nothing(tmp_path: Path) -> None:
    engine = engine_for(MonitorState(), tmp_path)
    assert await replay("real_host", engine) == []


async def test_psutil_probe_reads_this_machine() -> None:
    probe = PsutilProbe()
    first = {r.name: r for r in await probe.read()}
    second = {r.name: r for r in await probe.read()}
    cpu = second["cpu.percent"]
    assert cpu.available
    assert cpu.value is not None
    assert 0.0 <= cpu.value <= 100.0
    assert second["ram.total_bytes"].value
    assert second["ram.total_bytes"].value > 0
    assert any(name.startswith("disk./") for name in second)
    rx = first.get("net.rx_bytes_per_s")
    if rx is not None:  # a machine with a network interface besides loopback
        assert not rx.available
        assert rx.reason
        assert "two readings" in rx.reason
        assert second["net.rx_bytes_per_s"].available
    for reading in second.values():
        if not reading.available:
            assert reading.reason
            assert reading.value is None
        else:
            assert reading.value is not None
            assert math.isfinite(reading.value)


def test_readings_refuse_to_be_zero_when_unavailable() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        Reading(name="x", value=0.0, available=False, reason="nope")
    with pytest.raises(ValueError, match="needs a reason"):
        Reading(name="x", value=None, available=False, reason="")
    with pytest.raises(ValueError, match="no finite value"):
        Reading(name="x", value=None)
    with pytest.raises(ValueError, match="no finite value"):
        Reading(name="x", value=math.nan)
    sample = Sample.build(1.0, [Reading.unavailable("gpu.0.temp_c", "NVML absent", "°C")])
    assert sample.value("gpu.0.temp_c") is None
    assert sample.to_json()["readings"]["gpu.0.temp_c"] == {"unavailable": "NVML absent", "unit": "°C"}


def test_rule_settings_validate_hysteresis_and_names() -> None:
    with pytest.raises(ValueError, match="clear_below"):
        RuleSettings(name="bad", metric="cpu.percent", above=80, clear_below=90, action="alert")
    with pytest.raises(ValueError, match="unique"):
        MonitorSettings(rules=(DEFAULT_RULES[0], DEFAULT_RULES[0]))
    with pytest.raises(ValueError, match="pattern"):
        RuleSettings(name="Bad Name!", metric="cpu.percent", above=1, clear_below=0, action="alert")
    settings = MonitorSettings.model_validate(
        {"rules": [{"name": "hot", "metric": "gpu.*.temp_c", "above": 80, "clear_below": 70, "action": "alert"}]}
    )
    assert settings.rules[0].matches("gpu.1.temp_c")
    assert not settings.rules[0].matches("gpu.1.util_percent")
    defaults = {rule.name: (rule.metric, rule.above, rule.action) for rule in DEFAULT_RULES}
    assert defaults == {
        "cpu_high": ("cpu.percent", 80, "pause_admission"),
        "ram_high": ("ram.percent", 90, "unload_idle_models"),
        "vram_high": ("gpu.*.vram_percent", 95, "prefer_smaller_models"),
        "disk_high": ("disk.*.percent", 85, "clean_disk"),
        "gpu_hot": ("gpu.*.temp_c", 85, "alert"),
    }


def test_an_engine_refuses_a_rule_without_an_action() -> None:
    with pytest.raises(ValueError, match="no action registered"):
        RuleEngine(rules=DEFAULT_RULES, actions={"alert": AlertOnly()})


async def test_alerts_still_go_out_when_the_database_is_down_and_the_provider_unreachable(tmp_path: Path) -> None:
    from bot.db.engine import create_engine, session_factory
    from bot.engine.providers.lmstudio import LMStudioProvider
    from bot.monitor.store import MonitorStore

    unreachable_db = create_engine("mysql+aiomysql://root@127.0.0.1:1/nothing")
    down = LMStudioProvider(name="down", base_url="http://127.0.0.1:9")
    state = MonitorState()
    delivered: list[AlertNotice] = []

    async def on_alert(notice: AlertNotice) -> None:
        delivered.append(notice)

    engine = RuleEngine(
        rules=DEFAULT_RULES,
        actions={
            "pause_admission": PauseAdmission(state),
            "unload_idle_models": UnloadIdleModels(state=state, providers=lambda: [down]),
            "prefer_smaller_models": PreferSmallerModels(state),
            "clean_disk": CleanDisk(data_dir=tmp_path, retention=MonitorSettings().retention),
            "alert": AlertOnly(),
        },
        store=MonitorStore(session_factory(unreachable_db)),
        on_alert=on_alert,
    )
    try:
        await replay("ram_pressure", engine)
    finally:
        await unreachable_db.dispose()
        await down.aclose()
    assert [(n.rule, n.state) for n in delivered] == [("ram_high", "fired"), ("ram_high", "cleared")]
    assert delivered[0].incident_id is None
    assert delivered[0].outcome.startswith("no idle model was loaded; failed: down: cannot list models")
