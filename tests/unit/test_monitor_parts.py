"""The monitor's pieces: recordings, downsampling, clean-up inside the data dir, charts, tool parsers."""

from __future__ import annotations

import io
import json
import os
import plistlib
import struct
import time
from pathlib import Path

import pytest

from bot.events import Event
from bot.monitor.actions import clean_data_dir
from bot.monitor.charts import PNG_MAGIC, render_png
from bot.monitor.config import RetentionSettings
from bot.monitor.health import CheckResult, HealthMonitor
from bot.monitor.probes import PowermetricsProbe, RocmSmiProbe, parse_powermetrics, parse_rocm_smi
from bot.monitor.readings import Reading, Sample
from bot.monitor.replay import ReplayError, ReplaySource, parse_stream, record_samples
from bot.monitor.sampler import Downsampler
from bot.monitor.store import join_metric_name, split_metric_name

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "monitor"


# -- recordings ---------------------------------------------------------------------------------


def test_recordings_round_trip_through_the_replay_format() -> None:
    samples = [
        Sample.build(10.0, [Reading.of("cpu.percent", 12.5, "%"), Reading.unavailable("gpu.nvidia", "no NVML")]),
        Sample.build(11.0, [Reading.of("cpu.percent", 13.5, "%")]),
    ]
    buffer = io.StringIO()
    assert record_samples(samples, buffer) == 2
    parsed = parse_stream(buffer.getvalue().splitlines())
    assert parsed == samples


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "line 1|:1:"),
        ("[1, 2]", "JSON object"),
        ('{"at": "soon", "readings": {}}', "'at' must be a number"),
        ('{"at": 1, "readings": []}', "'readings' must be an object"),
        ('{"at": 1, "readings": {"cpu.percent": {"value": "high"}}}', "must be a number"),
        ('{"at": 1, "readings": {"cpu.percent": {"value": 1e999}}}', "finite"),
        ('{"at": 1, "readings": {"cpu.percent": true}}', "expected a number or an object"),
    ],
)
def test_malformed_recordings_name_the_line_and_the_problem(line: str, problem: str) -> None:
    with pytest.raises(ReplayError, match=problem):
        parse_stream(["# a comment", line], origin="bad.jsonl")


def test_recordings_refuse_time_going_backwards_and_empty_files(tmp_path: Path) -> None:
    lines = ['{"at": 5, "readings": {}}', '{"at": 4, "readings": {}}']
    with pytest.raises(ReplayError, match="backwards"):
        parse_stream(lines)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ReplayError, match="no samples"):
        ReplaySource.from_file(empty)
    with pytest.raises(ReplayError, match="cannot read"):
        ReplaySource.from_file(tmp_path / "missing.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ReplayError, match="UTF-8"):
        ReplaySource.from_file(binary)


def test_oversized_lines_are_refused() -> None:
    huge = '{"at": 1, "readings": {"x": "' + "a" * 1_000_001 + '"}}'
    with pytest.raises(ReplayError, match="longer than"):
        parse_stream([huge])


async def test_replay_loops_and_shifts_its_clock() -> None:
    source = ReplaySource(
        parse_stream(['{"at": 0, "readings": {"a": 1}}', '{"at": 1, "readings": {"a": 2}}']), loop=True
    )
    values = []
    clocks = []
    for _ in range(4):
        (reading,) = await source.read()
        values.append(reading.value)
        clocks.append(source.clock())
    assert values == [1.0, 2.0, 1.0, 2.0]
    assert clocks == sorted(clocks)
    assert len(set(clocks)) == 4


def test_every_shipped_recording_parses() -> None:
    files = sorted(FIXTURES.glob("*.jsonl"))
    assert len(files) >= 6
    for path in files:
        assert ReplaySource.from_file(path).remaining > 0


# -- history --------------------------------------------------------------------------------


def test_metric_names_split_into_metric_and_source_and_back() -> None:
    cases = {
        "cpu.percent": ("cpu.percent", ""),
        "disk./.percent": ("disk.percent", "/"),
        "disk./mnt/data.v2.percent": ("disk.percent", "/mnt/data.v2"),
        "gpu.0.vram_percent": ("gpu.vram_percent", "0"),
        "cpu.core.3.percent": ("cpu.percent", "core.3"),
        "proc.lmstudio.rss_bytes": ("proc.rss_bytes", "lmstudio"),
        "latency.lms_ms": ("latency_ms", "lms"),
    }
    for name, expected in cases.items():
        assert split_metric_name(name) == expected
        assert join_metric_name(*expected) == name


def test_downsampler_averages_per_window_skipping_unavailable_and_excluded() -> None:
    down = Downsampler(window_s=60, exclude=("cpu.core.*",))
    assert down.add(Sample.build(120.0, [Reading.of("cpu.percent", 10), Reading.of("cpu.core.0.percent", 5)])) == []
    assert (
        down.add(Sample.build(150.0, [Reading.of("cpu.percent", 30), Reading.unavailable("gpu.0.temp_c", "x")])) == []
    )
    rows = down.add(Sample.build(181.0, [Reading.of("cpu.percent", 90)]))
    assert [(r.metric, r.source, r.value, r.at.timestamp()) for r in rows] == [("cpu.percent", "", 20.0, 120.0)]
    (last,) = down.flush()
    assert (last.value, last.at.timestamp()) == (90.0, 180.0)
    assert down.flush() == []


# -- clean-up ------------------------------------------------------------------------------


def _aged(path: Path, *, days: float, size: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    old = time.time() - days * 86_400
    os.utime(path, (old, old))
    return path


def test_clean_deletes_only_expired_files_inside_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outside = _aged(tmp_path / "precious" / "keep.bin", days=365)
    old_cache = _aged(data / "cache" / "models" / "old.bin", days=10, size=4096)
    fresh_cache = _aged(data / "cache" / "new.bin", days=0.1)
    old_log = _aged(data / "logs" / "orchestrator.log.1", days=30)
    recent_log = _aged(data / "logs" / "orchestrator.log", days=1)
    database = _aged(data / "orchestrator.db", days=400)
    (data / "cache" / "escape").symlink_to(outside.parent)  # a link out of the data dir
    link_file = data / "cache" / "link.bin"
    link_file.symlink_to(outside)
    os.utime(link_file, (time.time() - 20 * 86_400,) * 2, follow_symlinks=False)

    report = clean_data_dir(data_dir=data, retention=RetentionSettings(cache_max_age_days=3, logs_max_age_days=14))

    assert not old_cache.exists()
    assert not old_log.exists()
    assert fresh_cache.exists()
    assert recent_log.exists()
    assert database.exists()
    assert outside.exists(), "a file outside the data directory was touched"
    assert not link_file.is_symlink()  # the link itself may go; its target stays
    assert not (data / "cache" / "models").exists()  # emptied directories are removed
    assert report.files == 3
    assert report.bytes == 4096 + 1000


def test_clean_refuses_a_cache_dir_that_is_a_link(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    elsewhere = _aged(tmp_path / "elsewhere" / "x.bin", days=100)
    (data / "cache").symlink_to(elsewhere.parent)
    report = clean_data_dir(data_dir=data, retention=RetentionSettings(cache_max_age_days=0))
    assert elsewhere.exists()
    assert report.files == 0
    assert any("symbolic link" in r for r in report.refused)


# -- charts --------------------------------------------------------------------------------


def test_chart_renders_a_png_of_the_last_hour_with_gaps_and_unavailable_series() -> None:
    source = ReplaySource(parse_stream((FIXTURES / "cpu_spike.jsonl").read_text().splitlines()))
    samples = source._samples  # the recorded samples themselves
    png = render_png(samples, metrics=["cpu.percent", "gpu.*.temp_c", "cpu.temp_c"], title="cpu")
    assert png.startswith(PNG_MAGIC)
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    assert (width, height) == (900, 420)
    assert len(png) > 5_000


def test_chart_of_nothing_still_renders() -> None:
    png = render_png([], metrics=["cpu.percent"])
    assert png.startswith(PNG_MAGIC)


# -- external GPU tools --------------------------------------------------------------------


def test_rocm_smi_json_becomes_amd_readings() -> None:
    output = json.dumps(
        {
            "card0": {
                "GPU use (%)": "37",
                "Temperature (Sensor edge) (C)": "61.0",
                "Average Graphics Package Power (W)": "88.0",
                "VRAM Total Memory (B)": "17163091968",
                "VRAM Total Used Memory (B)": "8581545984",
            },
            "card1": {"GPU use (%)": "N/A"},
            "system": {"Driver version": "6.3"},
        }
    ).encode()
    readings = {r.name: r for r in parse_rocm_smi(output)}
    assert readings["gpu.amd0.util_percent"].value == 37.0
    assert readings["gpu.amd0.temp_c"].value == 61.0
    assert readings["gpu.amd0.power_w"].value == 88.0
    assert readings["gpu.amd0.vram_percent"].value == pytest.approx(50.0, abs=0.01)
    assert not readings["gpu.amd1.util_percent"].available
    assert readings["gpu.amd1.vram_total_bytes"].reason == "rocm-smi reports no VRAM total"
    assert not any(name.startswith("gpu.amdsystem") for name in readings)


async def test_missing_gpu_tools_are_reported_not_guessed() -> None:
    (amd,) = await RocmSmiProbe(executable=None).read()
    assert not amd.available
    assert amd.reason
    assert "rocm-smi" in amd.reason
    (apple,) = await PowermetricsProbe(executable=None).read()
    assert not apple.available
    assert apple.reason
    assert "powermetrics" in apple.reason


async def test_a_failing_gpu_tool_reports_its_exit_status(tmp_path: Path) -> None:
    tool = tmp_path / "rocm-smi"
    tool.write_text("#!/bin/sh\necho 'ROCm driver not loaded' >&2\nexit 3\n")
    tool.chmod(0o755)
    probe = RocmSmiProbe(executable=str(tool))
    (first,) = await probe.read()
    assert first.reason == "waiting for the first tool output"
    assert probe._task is not None
    await probe._task
    (reading,) = await probe.read()
    assert reading.reason is not None
    assert "exited 3" in reading.reason
    assert "driver not loaded" in reading.reason
    await probe.aclose()


def test_powermetrics_plist_becomes_apple_readings() -> None:
    document = plistlib.dumps(
        {
            "elapsed_ns": 500_000_000,
            "thermal_pressure": "Nominal",
            "gpu": {"freq_hz": 1_296_000_000.0, "idle_ratio": 0.75},
            "processor": {"gpu_energy": 2500, "cpu_energy": 900},
        }
    )
    readings = {r.name: r for r in parse_powermetrics(document + b"\x00")}
    assert readings["gpu.apple.util_percent"].value == pytest.approx(25.0)
    assert readings["gpu.apple.clock_graphics_mhz"].value == pytest.approx(1296.0)
    assert readings["gpu.apple.power_w"].value == pytest.approx(5.0)
    assert readings["gpu.apple.thermal_pressure_level"].value == 0
    bare = {r.name: r for r in parse_powermetrics(plistlib.dumps({"elapsed_ns": 1}))}
    assert not bare["gpu.apple.util_percent"].available


async def test_monitor_charts_its_last_hour_from_memory(tmp_path: Path) -> None:
    from bot.monitor import Monitor, MonitorSettings

    source = ReplaySource.from_file(FIXTURES / "gpu_pressure.jsonl")
    monitor = Monitor(settings=MonitorSettings(), data_dir=tmp_path, probes=[source], clock=source.clock)
    while source.remaining:
        await monitor.sampler.sample_once()
    png = await monitor.chart_png(["gpu.*.vram_percent", "gpu.*.temp_c"], last_s=3600)
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 5_000
    status = monitor.status()
    assert status["ticks"] == 60
    assert {rule["rule"] for rule in status["rules"]} >= {"cpu_high", "gpu_hot"}


# -- health bookkeeping --------------------------------------------------------------------


class _Flag:
    """A component whose health the test sets (a real HealthCheck, as a chat connection is)."""

    name = "chat:slack"
    critical = True

    def __init__(self) -> None:
        self.ok = True
        self.restarts = 0

    async def check(self) -> CheckResult:
        if not self.ok:
            raise ConnectionError("socket closed by peer")
        return CheckResult(ok=True, detail="connected")

    async def restart(self) -> None:
        self.restarts += 1
        self.ok = True


async def test_health_verdict_goes_stale_and_restarts_are_budgeted() -> None:
    clock = [0.0]
    feeds: list[int] = []
    events: list[Event] = []
    health = HealthMonitor(
        publish=events.append,
        feed_watchdog=lambda: feeds.append(1),
        interval_s=10,
        timeout_s=1,
        restart_after_failures=1,
        max_restarts_per_hour=2,
        clock=lambda: clock[0],
    )
    chat = _Flag()
    health.register(chat, restart=chat.restart)
    with pytest.raises(ValueError, match="already registered"):
        health.register(chat)
    assert await health.is_healthy() is False  # no round yet
    assert (await health.run_once()).healthy
    assert await health.is_healthy()
    clock[0] += 31.5  # three intervals and the timeout without a round: the loop is hung
    assert await health.is_healthy() is False

    chat.ok = False
    report = await health.run_once()
    assert not report.healthy
    assert report.results["chat:slack"].detail == "ConnectionError: socket closed by peer"
    assert report.restarted == ("chat:slack",)
    assert chat.restarts == 1
    for _ in range(3):
        chat.ok = False
        await health.run_once()
    assert chat.restarts == 2  # the hourly budget holds
    clock[0] += 3601
    chat.ok = False
    await health.run_once()
    assert chat.restarts == 3
    assert len(feeds) == 1
    assert (await health.run_once()).healthy  # the last restart worked
    assert len(feeds) == 2
    alerts = [event for event in events if event.kind in ("alert", "alert_cleared")]
    assert alerts[0].kind == "alert"
    assert alerts[0].payload["rule"] == "health:chat:slack"
    assert alerts[0].payload["severity"] == "critical"
    assert alerts[0].payload["messages"]["pt-BR"].startswith("chat:slack falhou")
    assert alerts[1].kind == "alert_cleared"


async def test_llm_server_processes_are_found_and_measured(tmp_path: Path) -> None:
    import asyncio
    import sys

    from bot.monitor.probes import LLMProcessProbe

    server = tmp_path / "llama-server"  # the process name llama.cpp's server runs under
    server.symlink_to(sys.executable)
    process = await asyncio.create_subprocess_exec(
        str(server), "-c", "import time; x = bytearray(30_000_000); time.sleep(60)"
    )
    try:
        probe = LLMProcessProbe(discover_every_s=0.0)

        async def measured() -> dict[str, Reading]:
            return {r.name: r for r in await probe.read()}

        deadline = time.monotonic() + 10
        readings = await measured()
        while (readings["proc.llamacpp.rss_bytes"].value or 0) < 30_000_000 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            readings = await measured()
        assert readings["proc.llamacpp.count"].value == 1
        rss = readings["proc.llamacpp.rss_bytes"].value
        assert rss is not None
        assert rss > 30_000_000
        assert readings["proc.llamacpp.cpu_percent"].available
        assert readings["proc.ollama.rss_bytes"].reason == "no ollama process is running"
    finally:
        process.kill()
        await process.wait()
    gone = {r.name: r for r in await probe.read()}
    assert gone["proc.llamacpp.count"].value == 0
    assert not gone["proc.llamacpp.rss_bytes"].available
