"""Probes: where the numbers come from (psutil, NVML, rocm-smi, powermetrics, LLM servers).

Every probe implements the `Probe` port: `read()` returns readings, each a value or an explicit
"unavailable, because …". Probes are cheap enough for 1 Hz: anything costly (process discovery,
disk partition listing, temperature sensors, external tools, HTTP pings) is refreshed on its own
slower cadence and the last result reused in between, with its age bounded.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import plistlib
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from bot.engine.providers.port import LLMProvider
from bot.logs import get_logger
from bot.monitor.readings import Reading

log = get_logger(__name__)

Clock = Callable[[], float]


@runtime_checkable
class Probe(Protocol):
    """One source of readings; `read` may raise, the sampler turns that into unavailable readings."""

    name: str

    async def read(self) -> Sequence[Reading]:
        """The current readings of this source."""
        ...

    async def aclose(self) -> None:
        """Release whatever the probe holds (library handles, background tasks)."""
        ...


class _Cadence:
    """Says when a slow part of a probe is due again (monotonic time)."""

    def __init__(self, every_s: float, clock: Clock = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        now = self._clock()
        if self._last is None or now - self._last >= self.every_s:
            self._last = now
            return True
        return False


# ---------------------------------------------------------------------------------------------
# CPU, memory, disks, network (psutil)
# ---------------------------------------------------------------------------------------------


class PsutilProbe:
    """CPU (total, per core, load, temperature), RAM, swap, disks per mount and network rates."""

    name = "system"

    def __init__(
        self,
        *,
        partitions_every_s: float = 60.0,
        sensors_every_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        import psutil

        self._psutil = psutil
        self._clock = clock
        self._partitions_due = _Cadence(partitions_every_s, clock)
        self._sensors_due = _Cadence(sensors_every_s, clock)
        self._mounts: list[str] = []
        self._temperatures: list[Reading] = []
        self._last_net: tuple[float, int, int] | None = None
        # The first cpu_percent(None) call only primes the counters; prime now so the first
        # sample is a real measurement over the interval since construction.
        psutil.cpu_percent(interval=None, percpu=True)
        self._cpu_primed_at = clock()

    async def read(self) -> Sequence[Reading]:
        """CPU, memory, disks and network as they are now."""
        readings: list[Reading] = []
        readings += self._cpu()
        readings += self._memory()
        readings += self._disks()
        readings += self._network()
        return readings

    async def aclose(self) -> None:
        """Nothing to release: psutil keeps no handles between calls."""

    def _cpu(self) -> list[Reading]:
        ps = self._psutil
        per_core = ps.cpu_percent(interval=None, percpu=True)
        readings: list[Reading] = []
        if per_core:
            readings.append(Reading.of("cpu.percent", sum(per_core) / len(per_core), "%"))
            readings += [Reading.of(f"cpu.core.{i}.percent", pct, "%") for i, pct in enumerate(per_core)]
        else:
            readings.append(Reading.unavailable("cpu.percent", "psutil reports no CPUs", "%"))
        try:
            load1, load5, load15 = ps.getloadavg()
            readings += [
                Reading.of("cpu.load1", load1),
                Reading.of("cpu.load5", load5),
                Reading.of("cpu.load15", load15),
            ]
        except (OSError, AttributeError) as err:
            readings.append(Reading.unavailable("cpu.load1", f"load average not available: {err}"))
        if self._sensors_due.due():
            self._temperatures = self._read_temperatures()
        return readings + self._temperatures

    def _read_temperatures(self) -> list[Reading]:
        sensors = getattr(self._psutil, "sensors_temperatures", None)
        if sensors is None:
            return [Reading.unavailable("cpu.temp_c", "psutil has no temperature support here", "°C")]
        try:
            groups: Mapping[str, Any] = sensors()
        except OSError as err:
            return [Reading.unavailable("cpu.temp_c", f"cannot read temperature sensors: {err}", "°C")]
        if not groups:
            return [
                Reading.unavailable(
                    "cpu.temp_c",
                    "the kernel exposes no temperature sensor (no /sys/class/hwmon or thermal zone)",
                    "°C",
                )
            ]
        # Prefer the CPU package sensors; fall back to the hottest of whatever exists.
        preferred = [groups[key] for key in ("coretemp", "k10temp", "cpu_thermal", "zenpower") if key in groups]
        entries = [entry for group in (preferred or list(groups.values())) for entry in group]
        values = [float(entry.current) for entry in entries if entry.current is not None]
        if not values:
            return [Reading.unavailable("cpu.temp_c", "temperature sensors report no value", "°C")]
        return [Reading.of("cpu.temp_c", max(values), "°C")]

    def _memory(self) -> list[Reading]:
        ps = self._psutil
        memory = ps.virtual_memory()
        swap = ps.swap_memory()
        readings = [
            Reading.of("ram.percent", memory.percent, "%"),
            Reading.of("ram.used_bytes", memory.total - memory.available, "B"),
            Reading.of("ram.total_bytes", memory.total, "B"),
            Reading.of("swap.total_bytes", swap.total, "B"),
            Reading.of("swap.used_bytes", swap.used, "B"),
        ]
        if swap.total > 0:
            readings.append(Reading.of("swap.percent", swap.percent, "%"))
        else:
            readings.append(Reading.unavailable("swap.percent", "no swap is configured", "%"))
        return readings

    def _disks(self) -> list[Reading]:
        ps = self._psutil
        if self._partitions_due.due():
            seen: set[str] = set()
            mounts: list[str] = []
            for partition in ps.disk_partitions(all=False):
                if partition.mountpoint not in seen and not partition.mountpoint.startswith("/snap/"):
                    seen.add(partition.mountpoint)
                    mounts.append(partition.mountpoint)
            self._mounts = mounts or ["/"]
        readings: list[Reading] = []
        for mount in self._mounts:
            try:
                usage = ps.disk_usage(mount)
            except OSError as err:
                readings.append(Reading.unavailable(f"disk.{mount}.percent", f"cannot stat {mount}: {err}", "%"))
                continue
            readings += [
                Reading.of(f"disk.{mount}.percent", usage.percent, "%"),
                Reading.of(f"disk.{mount}.used_bytes", usage.used, "B"),
                Reading.of(f"disk.{mount}.total_bytes", usage.total, "B"),
            ]
        return readings

    def _network(self) -> list[Reading]:
        per_nic = self._psutil.net_io_counters(pernic=True) or {}
        # Loopback traffic is the daemon talking to itself (and to local LLM servers): it is not
        # network load, and it would count every byte twice (sent and received).
        external = [c for nic, c in per_nic.items() if not nic.startswith("lo")]
        now = self._clock()
        if not external:
            return [
                Reading.unavailable("net.rx_bytes_per_s", "no network interface besides loopback", "B/s"),
                Reading.unavailable("net.tx_bytes_per_s", "no network interface besides loopback", "B/s"),
            ]
        received = sum(c.bytes_recv for c in external)
        sent = sum(c.bytes_sent for c in external)
        previous = self._last_net
        self._last_net = (now, received, sent)
        if previous is None or now <= previous[0]:
            reason = "a rate needs two readings; the first sample only starts the count"
            return [
                Reading.unavailable("net.rx_bytes_per_s", reason, "B/s"),
                Reading.unavailable("net.tx_bytes_per_s", reason, "B/s"),
            ]
        elapsed = now - previous[0]
        # Counters can wrap or reset when an interface goes away; a negative rate is no reading.
        rx = max(0, received - previous[1]) / elapsed
        tx = max(0, sent - previous[2]) / elapsed
        return [Reading.of("net.rx_bytes_per_s", rx, "B/s"), Reading.of("net.tx_bytes_per_s", tx, "B/s")]


# ---------------------------------------------------------------------------------------------
# LLM server processes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerProcessPattern:
    """How to recognise one kind of LLM server among the running processes."""

    server: str
    names: tuple[str, ...] = ()
    cmdline: tuple[str, ...] = ()

    def matches(self, name: str, cmdline: Sequence[str]) -> bool:
        """Whether a process with this name and command line belongs to the server."""
        lowered = name.lower()
        # Exact name, or the name followed by a separator ("LM Studio Helper", "ollama_llama_server"),
        # never a bare prefix: "lms" must not match "lmsensors".
        if any(
            lowered == candidate or lowered.startswith(candidate + sep) for candidate in self.names for sep in " -_."
        ):
            return True
        joined = " ".join(cmdline).lower()
        return any(fragment in joined for fragment in self.cmdline)


DEFAULT_SERVER_PATTERNS: tuple[ServerProcessPattern, ...] = (
    ServerProcessPattern(
        server="lmstudio", names=("lm studio", "lm-studio", "lmstudio", "lms"), cmdline=("lm studio", "lmstudio")
    ),
    ServerProcessPattern(server="ollama", names=("ollama",), cmdline=("ollama serve", "ollama runner")),
    ServerProcessPattern(
        server="llamacpp",
        names=("llama-server", "llama-cli", "llama-cpp-server"),
        cmdline=("llama_cpp.server", "llama-server"),
    ),
)


class LLMProcessProbe:
    """CPU and resident memory of the LLM server processes running on this machine."""

    name = "llm_processes"

    def __init__(
        self,
        *,
        patterns: Sequence[ServerProcessPattern] = DEFAULT_SERVER_PATTERNS,
        discover_every_s: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        import psutil

        self._psutil = psutil
        self._patterns = tuple(patterns)
        self._discover_due = _Cadence(discover_every_s, clock)
        self._tracked: dict[str, list[Any]] = {pattern.server: [] for pattern in self._patterns}
        self._discovery: asyncio.Future[dict[str, list[Any]]] | None = None
        self._discovered = False

    async def read(self) -> Sequence[Reading]:
        """Per server: process count, summed CPU % (of one core) and summed RSS."""
        if self._discovery is None and self._discover_due.due():
            # Walking /proc costs milliseconds: in a thread, every few seconds. Shielded, so a tick
            # that times out does not lose the walk; the next tick collects it.
            self._discovery = asyncio.ensure_future(asyncio.to_thread(self._discover))
        if self._discovery is not None and (self._discovery.done() or not self._discovered):
            self._tracked = await asyncio.shield(self._discovery)
            self._discovery = None
            self._discovered = True
        readings: list[Reading] = []
        for server, processes in self._tracked.items():
            alive: list[Any] = []
            cpu = 0.0
            rss = 0
            for process in processes:
                try:
                    with process.oneshot():
                        cpu += process.cpu_percent(interval=None)
                        rss += process.memory_info().rss
                    alive.append(process)
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                    continue
            self._tracked[server] = alive
            readings.append(Reading.of(f"proc.{server}.count", len(alive)))
            if alive:
                readings.append(Reading.of(f"proc.{server}.cpu_percent", cpu, "%"))
                readings.append(Reading.of(f"proc.{server}.rss_bytes", rss, "B"))
            else:
                reason = f"no {server} process is running"
                readings.append(Reading.unavailable(f"proc.{server}.cpu_percent", reason, "%"))
                readings.append(Reading.unavailable(f"proc.{server}.rss_bytes", reason, "B"))
        return readings

    async def aclose(self) -> None:
        """Forget the tracked processes (a walk in progress finishes in its thread, unused)."""
        self._discovery = None
        self._tracked = {pattern.server: [] for pattern in self._patterns}

    def _discover(self) -> dict[str, list[Any]]:
        ps = self._psutil
        found: dict[str, list[Any]] = {pattern.server: [] for pattern in self._patterns}
        known = {p.pid: p for processes in self._tracked.values() for p in processes}
        for process in ps.process_iter(["name", "cmdline"]):
            try:
                name = process.info.get("name") or ""
                cmdline = process.info.get("cmdline") or []
            except (ps.NoSuchProcess, ps.AccessDenied):
                continue
            for pattern in self._patterns:
                if pattern.matches(name, cmdline):
                    # Keep the old Process object: its cpu_percent baseline is already primed.
                    tracked = known.get(process.pid, process)
                    if tracked is process:
                        with contextlib.suppress(ps.NoSuchProcess, ps.AccessDenied):
                            process.cpu_percent(interval=None)
                    found[pattern.server].append(tracked)
                    break
        return found


# ---------------------------------------------------------------------------------------------
# NVIDIA GPUs through NVML
# ---------------------------------------------------------------------------------------------


class NvmlProbe:
    """NVIDIA GPUs: utilisation, VRAM total/used and per process, temperature, clocks, power."""

    name = "nvidia"

    def __init__(self, *, retry_init_every_s: float = 300.0, clock: Clock = time.monotonic) -> None:
        self._nvml: Any = None
        self._init_error: str | None = None
        self._retry_init = _Cadence(retry_init_every_s, clock)

    def _ensure_init(self) -> str | None:
        """None when NVML is ready, else why it is not (retried now and then, e.g. after a driver load)."""
        if self._nvml is not None:
            return None
        if self._init_error is not None and not self._retry_init.due():
            return self._init_error
        try:
            import pynvml
        except ImportError:
            self._init_error = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return self._init_error
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            # LibraryNotFound means no NVIDIA driver on this machine: expected, not a fault.
            self._init_error = f"NVML unavailable: {_nvml_text(err)}"
            return self._init_error
        self._retry_init.due()
        self._nvml = pynvml
        self._init_error = None
        return None

    async def read(self) -> Sequence[Reading]:
        """One group of readings per GPU; an unsupported query is unavailable, not zero."""
        problem = self._ensure_init()
        if problem is not None:
            return [Reading.unavailable("gpu.nvidia", problem)]
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as err:
            return [Reading.unavailable("gpu.nvidia", f"cannot count GPUs: {_nvml_text(err)}")]
        readings: list[Reading] = [Reading.of("gpu.nvidia.count", count)]
        for index in range(count):
            readings += self._read_device(index)
        return readings

    def _read_device(self, index: int) -> list[Reading]:
        nvml = self._nvml
        prefix = f"gpu.{index}"
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as err:
            return [Reading.unavailable(prefix, f"cannot open GPU {index}: {_nvml_text(err)}")]
        readings: list[Reading] = []

        def take(name: str, unit: str, query: Callable[[], float]) -> None:
            try:
                readings.append(Reading.of(f"{prefix}.{name}", query(), unit))
            except nvml.NVMLError as err:
                readings.append(Reading.unavailable(f"{prefix}.{name}", _nvml_text(err), unit))

        take("util_percent", "%", lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            readings += [
                Reading.of(f"{prefix}.vram_total_bytes", memory.total, "B"),
                Reading.of(f"{prefix}.vram_used_bytes", memory.used, "B"),
                Reading.of(f"{prefix}.vram_percent", 100.0 * memory.used / memory.total, "%")
                if memory.total
                else Reading.unavailable(f"{prefix}.vram_percent", "NVML reports zero VRAM", "%"),
            ]
        except nvml.NVMLError as err:
            for name, unit in (("vram_total_bytes", "B"), ("vram_used_bytes", "B"), ("vram_percent", "%")):
                readings.append(Reading.unavailable(f"{prefix}.{name}", _nvml_text(err), unit))
        take("temp_c", "°C", lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        take("clock_graphics_mhz", "MHz", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_GRAPHICS))
        take("clock_memory_mhz", "MHz", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM))
        take("power_w", "W", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        try:
            processes = list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
            processes += list(nvml.nvmlDeviceGetGraphicsRunningProcesses(handle))
        except nvml.NVMLError as err:
            readings.append(Reading.unavailable(f"{prefix}.processes", _nvml_text(err)))
        else:
            per_pid: dict[int, int] = {}
            for process in processes:
                used = getattr(process, "usedGpuMemory", None)
                if used is not None:
                    per_pid[int(process.pid)] = per_pid.get(int(process.pid), 0) + int(used)
            for pid, used in sorted(per_pid.items()):
                readings.append(Reading.of(f"{prefix}.proc.{pid}.vram_bytes", used, "B"))
        return readings

    async def aclose(self) -> None:
        """Shut NVML down if it was started."""
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml = None


def _nvml_text(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text.decode() if isinstance(text, bytes) else text


# ---------------------------------------------------------------------------------------------
# External tools: rocm-smi (AMD) and powermetrics (Apple)
# ---------------------------------------------------------------------------------------------


class _ToolProbe(abc.ABC):
    """Runs a command-line tool on a slow cadence and keeps its last parsed readings."""

    name = "tool"
    tool_readings_prefix = "gpu.tool"

    def __init__(self, *, executable: str | None, every_s: float, timeout_s: float, clock: Clock) -> None:
        self._executable = executable
        self._due = _Cadence(every_s, clock)
        self._timeout_s = timeout_s
        self._last: list[Reading] = []
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    def command(self, executable: str) -> list[str]:
        """The argv that makes the tool print one report."""

    @abc.abstractmethod
    def parse(self, output: bytes) -> list[Reading]:
        """Readings from the tool's output."""

    @abc.abstractmethod
    def missing_reason(self) -> str:
        """Why there is no reading when the tool is absent."""

    async def read(self) -> Sequence[Reading]:
        """The last parsed output; a refresh runs in the background when due."""
        if self._executable is None:
            return [Reading.unavailable(self.tool_readings_prefix, self.missing_reason())]
        if self._due.due() and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._refresh(self._executable))
        if not self._last:
            return [Reading.unavailable(self.tool_readings_prefix, "waiting for the first tool output")]
        return list(self._last)

    async def _refresh(self, executable: str) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(executable),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                stdout, stderr = await asyncio.wait_for(process.communicate(), self._timeout_s)
            except TimeoutError:
                process.kill()
                await process.wait()
                self._last = [Reading.unavailable(self.tool_readings_prefix, f"{executable} timed out")]
                return
            if process.returncode != 0:
                detail = stderr.decode(errors="replace").strip()[:200]
                self._last = [
                    Reading.unavailable(
                        self.tool_readings_prefix, f"{executable} exited {process.returncode}: {detail}"
                    )
                ]
                return
            self._last = self.parse(stdout) or [
                Reading.unavailable(self.tool_readings_prefix, f"{executable} reported no GPU")
            ]
        except (OSError, ValueError) as err:
            self._last = [Reading.unavailable(self.tool_readings_prefix, f"{executable} failed: {err}")]

    async def aclose(self) -> None:
        """Stop a refresh still running."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class RocmSmiProbe(_ToolProbe):
    """AMD GPUs through `rocm-smi --json`: utilisation, VRAM, temperature, power."""

    name = "amd"
    tool_readings_prefix = "gpu.amd"

    def __init__(self, *, executable: str | None = "auto", every_s: float = 5.0, clock: Clock = time.monotonic) -> None:
        """`executable`: "auto" finds the tool on PATH; None means it is absent."""
        super().__init__(
            executable=shutil.which("rocm-smi") if executable == "auto" else executable,
            every_s=every_s,
            timeout_s=10.0,
            clock=clock,
        )

    def command(self, executable: str) -> list[str]:
        """rocm-smi's JSON report of use, VRAM, temperature and power."""
        return [executable, "--showuse", "--showmeminfo", "vram", "--showtemp", "--showpower", "--json"]

    def missing_reason(self) -> str:
        """Why there is no AMD reading."""
        return "rocm-smi is not on PATH (no ROCm installed)"

    def parse(self, output: bytes) -> list[Reading]:
        """Readings from rocm-smi's JSON (`{"card0": {"GPU use (%)": "3", …}}`)."""
        return parse_rocm_smi(output)


def parse_rocm_smi(output: bytes) -> list[Reading]:
    """Turn rocm-smi's JSON into readings named `gpu.amd<index>.*`."""
    data = json.loads(output.decode(errors="replace"))
    if not isinstance(data, dict):
        raise ValueError("rocm-smi JSON is not an object")
    readings: list[Reading] = []
    for card, fields in sorted(data.items()):
        if not card.startswith("card") or not isinstance(fields, dict):
            continue
        prefix = f"gpu.amd{card.removeprefix('card')}"

        def find(*fragments: str, fields: Mapping[str, Any] = fields) -> float | None:
            for key, value in fields.items():
                lowered = key.lower()
                if all(fragment in lowered for fragment in fragments):
                    try:
                        return float(str(value).strip().rstrip("%"))
                    except ValueError:
                        return None
            return None

        def put(name: str, unit: str, value: float | None, missing: str, prefix: str = prefix) -> None:
            readings.append(
                Reading.of(f"{prefix}.{name}", value, unit)
                if value is not None
                else Reading.unavailable(f"{prefix}.{name}", missing, unit)
            )

        total = find("vram total memory")
        used = find("vram total used memory")
        put("util_percent", "%", find("gpu use"), "rocm-smi reports no GPU use")
        put("vram_total_bytes", "B", total, "rocm-smi reports no VRAM total")
        put("vram_used_bytes", "B", used, "rocm-smi reports no VRAM use")
        put(
            "vram_percent",
            "%",
            100.0 * used / total if used is not None and total else None,
            "VRAM share needs both total and used",
        )
        put("temp_c", "°C", find("temperature", "edge") or find("temperature"), "rocm-smi reports no temperature")
        put("power_w", "W", find("power", "(w)"), "rocm-smi reports no power draw")
    return readings


class PowermetricsProbe(_ToolProbe):
    """Apple GPUs through `powermetrics` (needs root): busy share, frequency, power."""

    name = "apple"
    tool_readings_prefix = "gpu.apple"

    def __init__(self, *, executable: str | None = "auto", every_s: float = 5.0, clock: Clock = time.monotonic) -> None:
        """`executable`: "auto" finds the tool on PATH; None means it is absent."""
        super().__init__(
            executable=shutil.which("powermetrics") if executable == "auto" else executable,
            every_s=every_s,
            timeout_s=10.0,
            clock=clock,
        )

    def command(self, executable: str) -> list[str]:
        """One 500 ms plist sample of the GPU and CPU power samplers."""
        return [executable, "--samplers", "gpu_power,cpu_power,thermal", "-i", "500", "-n", "1", "-f", "plist"]

    def missing_reason(self) -> str:
        """Why there is no Apple GPU reading."""
        return "powermetrics is not on PATH (not macOS)"

    def parse(self, output: bytes) -> list[Reading]:
        """Readings from powermetrics' plist."""
        return parse_powermetrics(output)


def parse_powermetrics(output: bytes) -> list[Reading]:
    """Turn one powermetrics plist sample into `gpu.apple.*` readings."""
    # powermetrics separates plist documents with NUL bytes; take the first complete one.
    document = output.split(b"\x00", 1)[0].strip()
    data = plistlib.loads(document)
    readings: list[Reading] = []
    gpu = data.get("gpu") or {}
    idle_ratio = gpu.get("idle_ratio")
    if isinstance(idle_ratio, int | float):
        readings.append(Reading.of("gpu.apple.util_percent", 100.0 * (1.0 - float(idle_ratio)), "%"))
    else:
        readings.append(Reading.unavailable("gpu.apple.util_percent", "powermetrics gave no gpu idle_ratio", "%"))
    freq = gpu.get("freq_hz")
    if isinstance(freq, int | float):
        readings.append(Reading.of("gpu.apple.clock_graphics_mhz", float(freq) / 1e6, "MHz"))
    processor = data.get("processor") or {}
    energy_mj = processor.get("gpu_energy")
    elapsed_ns = data.get("elapsed_ns")
    if isinstance(energy_mj, int | float) and isinstance(elapsed_ns, int | float) and elapsed_ns > 0:
        readings.append(Reading.of("gpu.apple.power_w", float(energy_mj) / 1000.0 / (elapsed_ns / 1e9), "W"))
    else:
        readings.append(Reading.unavailable("gpu.apple.power_w", "powermetrics gave no gpu_energy", "W"))
    pressure = data.get("thermal_pressure")
    levels = {"Nominal": 0, "Fair": 1, "Light": 1, "Moderate": 2, "Serious": 3, "Heavy": 3, "Critical": 4}
    if isinstance(pressure, str) and pressure in levels:
        readings.append(Reading.of("gpu.apple.thermal_pressure_level", levels[pressure]))
    return readings


# ---------------------------------------------------------------------------------------------
# Latency to each LLM provider
# ---------------------------------------------------------------------------------------------


class ProviderLatencyProbe:
    """Round-trip time of each provider's health endpoint, refreshed in the background."""

    name = "provider_latency"

    def __init__(
        self,
        *,
        providers: Callable[[], Iterable[LLMProvider]] | Iterable[LLMProvider],
        every_s: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._providers = providers
        self._due = _Cadence(every_s, clock)
        self.every_s = every_s
        self._last: dict[str, Reading] = {}
        self._task: asyncio.Task[None] | None = None

    def _current(self) -> list[LLMProvider]:
        source = self._providers
        return list(source() if callable(source) else source)

    async def read(self) -> Sequence[Reading]:
        """The latest latency per provider; pings never hold up the 1 Hz tick."""
        providers = self._current()
        self._due.every_s = self.every_s
        if self._due.due() and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._refresh(providers))
        readings = []
        for provider in providers:
            name = f"latency.{provider.name}_ms"
            readings.append(self._last.get(name) or Reading.unavailable(name, "first health check pending", "ms"))
        return readings

    async def refresh_now(self) -> None:
        """Ping every provider now (used at start and by tests that need a fresh number)."""
        await self._refresh(self._current())

    async def _refresh(self, providers: Sequence[LLMProvider]) -> None:
        statuses = await asyncio.gather(*(provider.health() for provider in providers), return_exceptions=True)
        for provider, status in zip(providers, statuses, strict=True):
            name = f"latency.{provider.name}_ms"
            if isinstance(status, BaseException):
                # health() is specified never to raise; if one does, that is the reading's reason.
                self._last[name] = Reading.unavailable(name, f"health check raised {status!r}", "ms")
            elif not status.ok or status.latency_ms is None:
                self._last[name] = Reading.unavailable(name, status.detail or "provider is not healthy", "ms")
            else:
                self._last[name] = Reading.of(name, status.latency_ms, "ms")

    async def aclose(self) -> None:
        """Stop a ping still running."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def default_probes(*, providers: Callable[[], Iterable[LLMProvider]] | Iterable[LLMProvider] = ()) -> list[Probe]:
    """Every probe that applies on this machine; GPU tools are tried only when present."""
    probes: list[Probe] = [PsutilProbe(), LLMProcessProbe(), NvmlProbe()]
    if shutil.which("rocm-smi"):
        probes.append(RocmSmiProbe())
    if shutil.which("powermetrics"):
        probes.append(PowermetricsProbe())
    probes.append(ProviderLatencyProbe(providers=providers))
    return probes
