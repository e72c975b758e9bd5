"""GPU figures through NVML (nvidia-ml-py, `import pynvml`) while a point runs: memory used and
total, utilisation, and on Hopper and newer the GPM metrics DRAM bandwidth utilisation and SM
occupancy (FACTS.md 5).

Nothing here may end a profile. A metric NVML cannot give (no driver, no library, a MIG device,
a GPU older than Hopper for GPM) is absent from the result, with the reason in `absent`; every
query is guarded on its own, so one unsupported call leaves the others working.

The pynvml module is a parameter (default: the real one, imported on first use) so tests can
hand in a stand-in; on a GPU the same code runs against the driver.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

# GPM metric ids (pynvml NVML_GPM_METRIC_*; FACTS 5), used when the module lacks the constants
GPM_SM_OCCUPANCY = 3
GPM_DRAM_BW_UTIL = 10
# GPM needs two samples at least this far apart ("due to the internal sample refresh rate")
GPM_MIN_INTERVAL_S = 0.1
DEFAULT_INTERVAL_S = 0.5


@dataclass(frozen=True)
class DeviceInfo:
    name: str | None = None
    memory_total_bytes: int | None = None
    bandwidth_bytes_per_s: float | None = None  # max memory clock x bus width x 2 / 8
    mig_enabled: bool | None = None
    gpm_supported: bool = False


@dataclass(frozen=True)
class GpuSample:
    """One reading; None where NVML could not say. Fractions are 0..1."""

    time_s: float
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    gpu_utilization: float | None = None  # share of the sample period a kernel ran
    memory_busy: float | None = None  # share of the period device memory was read or written
    dram_bandwidth_utilization: float | None = None  # GPM: DRAM bandwidth used / peak
    sm_occupancy: float | None = None  # GPM: active warps / theoretical maximum


@dataclass
class GpuSummary:
    """The readings of one point: peaks for memory, means for the rest."""

    samples: int = 0
    memory_used_peak_bytes: int | None = None
    memory_total_bytes: int | None = None
    gpu_utilization: float | None = None
    memory_busy: float | None = None
    dram_bandwidth_utilization: float | None = None
    sm_occupancy: float | None = None
    absent: dict[str, str] = field(default_factory=dict)  # metric -> why NVML gave none


def summarise(samples: list[GpuSample], absent: dict[str, str] | None = None) -> GpuSummary:
    """Peak memory and mean utilisations over the samples; a metric no sample has stays None."""

    def values(name: str) -> list[Any]:
        return [getattr(s, name) for s in samples if getattr(s, name) is not None]

    def mean(name: str) -> float | None:
        found = values(name)
        return sum(found) / len(found) if found else None

    used = values("memory_used_bytes")
    totals = values("memory_total_bytes")
    summary = GpuSummary(
        samples=len(samples),
        memory_used_peak_bytes=max(used) if used else None,
        memory_total_bytes=totals[-1] if totals else None,
        gpu_utilization=mean("gpu_utilization"),
        memory_busy=mean("memory_busy"),
        dram_bandwidth_utilization=mean("dram_bandwidth_utilization"),
        sm_occupancy=mean("sm_occupancy"),
    )
    # a metric that failed once but was read at other times is not absent
    present = {"memory_used_bytes": summary.memory_used_peak_bytes is not None}
    for name in ("gpu_utilization", "memory_busy", "dram_bandwidth_utilization", "sm_occupancy"):
        present[name] = getattr(summary, name) is not None
    summary.absent = {k: v for k, v in (absent or {}).items() if not present.get(k, False)}
    return summary


def _fraction(percent: float) -> float:
    return min(max(float(percent) / 100.0, 0.0), 1.0)


def _why(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Nvml:
    """One GPU through NVML. `open()` never raises: it says whether NVML answered."""

    def __init__(self, index: int = 0, module: ModuleType | Any | None = None) -> None:
        self.index = index
        self._module = module
        self.nv: Any = None
        self.handle: Any = None
        self.absent: dict[str, str] = {}
        self.info = DeviceInfo()
        self._gpm_previous: Any = None
        self._gpm_previous_time = 0.0
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self.handle is not None

    def open(self) -> bool:
        try:
            nv: Any = self._module
            if nv is None:
                import pynvml

                nv = pynvml
            nv.nvmlInit()
        except Exception as err:  # ImportError, NVMLError (library not found, driver not loaded)
            self._all_absent(f"NVML unavailable: {_why(err)}")
            return False
        self.nv = nv
        try:
            self.handle = nv.nvmlDeviceGetHandleByIndex(self.index)
        except Exception as err:
            self._all_absent(f"no GPU at NVML index {self.index}: {_why(err)}")
            self._shutdown()
            return False
        self.info = self._device_info()
        if self.info.mig_enabled:
            reason = "MIG is enabled: NVML does not report utilisation per MIG instance"
            self.absent.setdefault("gpu_utilization", reason)
            self.absent.setdefault("memory_busy", reason)
        return True

    def _all_absent(self, reason: str) -> None:
        for metric in (
            "memory_used_bytes",
            "gpu_utilization",
            "memory_busy",
            "dram_bandwidth_utilization",
            "sm_occupancy",
        ):
            self.absent.setdefault(metric, reason)

    def _call(self, metric: str, function: str, *args: Any) -> Any:
        """nv.<function>(*args), or None with the reason kept under `metric`."""
        try:
            return getattr(self.nv, function)(*args)
        except Exception as err:  # NVMLError_NotSupported, FunctionNotFound, an old pynvml, ...
            self.absent.setdefault(metric, f"{function}: {_why(err)}")
            return None

    def _device_info(self) -> DeviceInfo:
        nv, handle = self.nv, self.handle
        name = self._call("name", "nvmlDeviceGetName", handle)
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        memory = self._call("memory_total_bytes", "nvmlDeviceGetMemoryInfo", handle)
        mig = self._call("mig_mode", "nvmlDeviceGetMigMode", handle)
        mig_enabled = None
        if isinstance(mig, list | tuple) and mig:
            mig_enabled = int(mig[0]) == 1
        bandwidth = None
        clock_mhz = self._call(
            "bandwidth", "nvmlDeviceGetMaxClockInfo", handle, getattr(nv, "NVML_CLOCK_MEM", 2)
        )
        bus_bits = self._call("bandwidth", "nvmlDeviceGetMemoryBusWidth", handle)
        if clock_mhz and bus_bits:
            bandwidth = float(clock_mhz) * 1e6 * float(bus_bits) * 2 / 8
        gpm = False
        if mig_enabled:
            reason = "MIG is enabled: GPM of the whole GPU would not describe this instance"
            self.absent.setdefault("dram_bandwidth_utilization", reason)
            self.absent.setdefault("sm_occupancy", reason)
        else:
            support = self._call("dram_bandwidth_utilization", "nvmlGpmQueryDeviceSupport", handle)
            gpm = bool(support is not None and getattr(support, "isSupportedDevice", 0))
            if not gpm:
                reason = "GPM not supported on this GPU or driver (Hopper and newer)"
                self.absent.setdefault("dram_bandwidth_utilization", reason)
                self.absent.setdefault("sm_occupancy", reason)
        return DeviceInfo(
            name=name if isinstance(name, str) else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            bandwidth_bytes_per_s=bandwidth,
            mig_enabled=mig_enabled,
            gpm_supported=gpm,
        )

    def sample(self) -> GpuSample:
        """One reading now. GPM values cover the time since the previous sample (None the first
        time, or when less than 100 ms passed)."""
        now = time.monotonic()
        if not self.available:
            return GpuSample(time_s=now)
        with self._lock:
            memory = self._call("memory_used_bytes", "nvmlDeviceGetMemoryInfo", self.handle)
            util = None
            if not self.info.mig_enabled:
                util = self._call("gpu_utilization", "nvmlDeviceGetUtilizationRates", self.handle)
                if util is None:
                    self.absent.setdefault("memory_busy", self.absent["gpu_utilization"])
            dram, occupancy = self._gpm(now) if self.info.gpm_supported else (None, None)
        return GpuSample(
            time_s=now,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            gpu_utilization=_fraction(util.gpu) if util is not None else None,
            memory_busy=_fraction(util.memory) if util is not None else None,
            dram_bandwidth_utilization=dram,
            sm_occupancy=occupancy,
        )

    def _gpm(self, now: float) -> tuple[float | None, float | None]:
        nv = self.nv
        if self._gpm_previous is not None and now - self._gpm_previous_time < GPM_MIN_INTERVAL_S:
            return None, None
        current = self._call("dram_bandwidth_utilization", "nvmlGpmSampleAlloc")
        if current is None:
            return self._gpm_off()
        if self._call("dram_bandwidth_utilization", "nvmlGpmSampleGet", self.handle, current) is None:
            self._free(current)
            return self._gpm_off()
        previous, self._gpm_previous, self._gpm_previous_time = self._gpm_previous, current, now
        if previous is None:
            return None, None
        try:
            request = nv.c_nvmlGpmMetricsGet_t()
            request.version = getattr(nv, "NVML_GPM_METRICS_GET_VERSION", 1)
            request.numMetrics = 2
            request.sample1 = previous
            request.sample2 = current
            request.metrics[0].metricId = getattr(nv, "NVML_GPM_METRIC_DRAM_BW_UTIL", GPM_DRAM_BW_UTIL)
            request.metrics[1].metricId = getattr(nv, "NVML_GPM_METRIC_SM_OCCUPANCY", GPM_SM_OCCUPANCY)
            nv.nvmlGpmMetricsGet(request)
        except Exception as err:
            self.absent.setdefault("dram_bandwidth_utilization", f"nvmlGpmMetricsGet: {_why(err)}")
            self.absent.setdefault("sm_occupancy", f"nvmlGpmMetricsGet: {_why(err)}")
            return None, None
        finally:
            self._free(previous)
        success = getattr(nv, "NVML_SUCCESS", 0)
        found: list[float | None] = []
        for metric, name in (
            (request.metrics[0], "dram_bandwidth_utilization"),
            (request.metrics[1], "sm_occupancy"),
        ):
            if int(getattr(metric, "nvmlReturn", success)) != success:
                self.absent.setdefault(name, f"GPM metric {metric.metricId} returned {metric.nvmlReturn}")
                found.append(None)
            else:
                found.append(_fraction(metric.value))
        return found[0], found[1]

    def _gpm_off(self) -> tuple[None, None]:
        """GPM failed at run time: stop asking for it."""
        self.info = replace(self.info, gpm_supported=False)
        self.absent.setdefault("sm_occupancy", self.absent.get("dram_bandwidth_utilization", "GPM failed"))
        return None, None

    def _free(self, sample: Any) -> None:
        with contextlib.suppress(Exception):  # freeing is best effort
            self.nv.nvmlGpmSampleFree(sample)

    def reset_gpm(self) -> None:
        """Forget the previous GPM sample, so the next interval starts now (at a point's start)."""
        with self._lock:
            if self._gpm_previous is not None:
                self._free(self._gpm_previous)
                self._gpm_previous = None

    def close(self) -> None:
        with self._lock:
            if self._gpm_previous is not None:
                self._free(self._gpm_previous)
                self._gpm_previous = None
            self._shutdown()

    def _shutdown(self) -> None:
        if self.nv is not None:
            with contextlib.suppress(Exception):
                self.nv.nvmlShutdown()
        self.handle = None


class NvmlSampler:
    """Samples one GPU in a background thread between start() and stop(); stop() returns the
    summary. Safe to use when NVML is absent (the summary then says why every metric is)."""

    def __init__(self, nvml: Nvml, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if interval_s <= GPM_MIN_INTERVAL_S:
            raise ValueError(f"the sampling interval must exceed {GPM_MIN_INTERVAL_S} s (GPM's refresh rate)")
        self.nvml = nvml
        self.interval_s = interval_s
        self.samples: list[GpuSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.samples = []
        self._stop.clear()
        if not self.nvml.available:
            return
        self.nvml.reset_gpm()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.samples.append(self.nvml.sample())
            except Exception as err:  # never let sampling end a profile
                self.nvml.absent.setdefault("sampling", _why(err))
                return
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> GpuSummary:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.nvml.available:
            try:
                self.samples.append(self.nvml.sample())  # the state at the end of the point
            except Exception as err:
                self.nvml.absent.setdefault("sampling", _why(err))
        return summarise(self.samples, self.nvml.absent)
