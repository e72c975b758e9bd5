"""NVML sampling with a stand-in pynvml module (no GPU where unit tests run): present metrics are
read and converted, absent ones are reported absent with a reason, and nothing raises."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from llmpack.profiler.nvml import GpuSample, Nvml, NvmlSampler, summarise

GIB = 1 << 30


class NVMLError(Exception):
    pass


class FakeNvml:
    """The slice of pynvml's API the sampler uses, for one GPU."""

    NVML_CLOCK_MEM = 2
    NVML_SUCCESS = 0
    NVML_GPM_METRICS_GET_VERSION = 1
    NVML_GPM_METRIC_SM_OCCUPANCY = 3
    NVML_GPM_METRIC_DRAM_BW_UTIL = 10
    NVMLError = NVMLError

    def __init__(self, *, init_error=None, gpm=True, mig=False, utilisation=True, gpm_values=None):
        self.init_error = init_error
        self.gpm = gpm
        self.mig = mig
        self.utilisation = utilisation
        self.gpm_values = gpm_values or {10: 62.5, 3: 31.0}
        self.used = 20 * GIB
        self.allocated = 0
        self.freed = 0
        self.shut_down = False

    def nvmlInit(self):
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetHandleByIndex(self, index):
        if index != 0:
            raise NVMLError("Invalid Argument")
        return "gpu0"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.used += GIB
        return SimpleNamespace(total=80 * GIB, free=80 * GIB - self.used, used=self.used)

    def nvmlDeviceGetUtilizationRates(self, handle):
        if self.mig or not self.utilisation:
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=87, memory=55)

    def nvmlDeviceGetMigMode(self, handle):
        return [1 if self.mig else 0, 0]

    def nvmlDeviceGetMaxClockInfo(self, handle, clock):
        assert clock == self.NVML_CLOCK_MEM
        return 2619

    def nvmlDeviceGetMemoryBusWidth(self, handle):
        return 5120

    def nvmlGpmQueryDeviceSupport(self, handle):
        if self.gpm is None:
            raise NVMLError("Function Not Found")  # a driver older than GPM
        return SimpleNamespace(isSupportedDevice=1 if self.gpm else 0)

    def nvmlGpmSampleAlloc(self):
        self.allocated += 1
        return object()

    def nvmlGpmSampleGet(self, handle, sample):
        return sample

    def nvmlGpmSampleFree(self, sample):
        self.freed += 1

    def c_nvmlGpmMetricsGet_t(self):
        return SimpleNamespace(
            version=0,
            numMetrics=0,
            sample1=None,
            sample2=None,
            metrics=[SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(4)],
        )

    def nvmlGpmMetricsGet(self, request):
        assert request.version == 1 and request.numMetrics == 2
        assert request.sample1 is not None and request.sample2 is not None
        for metric in request.metrics[: request.numMetrics]:
            metric.value = self.gpm_values[metric.metricId]
        return request


def open_nvml(**fake_args):
    fake = FakeNvml(**fake_args)
    nvml = Nvml(module=fake)
    return nvml, fake


def test_hopper_gives_every_metric():
    nvml, fake = open_nvml()
    assert nvml.open()
    assert nvml.info.name == "NVIDIA H100 80GB HBM3"
    assert nvml.info.memory_total_bytes == 80 * GIB
    assert nvml.info.bandwidth_bytes_per_s == pytest.approx(3.352e12, rel=1e-3)  # FACTS 5
    assert nvml.info.gpm_supported and nvml.info.mig_enabled is False
    first = nvml.sample()
    assert first.gpu_utilization == 0.87 and first.memory_busy == 0.55
    assert first.dram_bandwidth_utilization is None  # GPM needs two samples
    time.sleep(0.12)
    second = nvml.sample()
    assert second.dram_bandwidth_utilization == 0.625 and second.sm_occupancy == 0.31
    assert second.memory_used_bytes > first.memory_used_bytes
    nvml.close()
    assert fake.freed == fake.allocated and fake.shut_down
    assert nvml.absent == {}


def test_gpm_samples_closer_than_100_ms_are_not_compared():
    nvml, fake = open_nvml()
    nvml.open()
    nvml.sample()
    quick = nvml.sample()
    assert quick.dram_bandwidth_utilization is None and fake.allocated == 1


def test_no_driver_means_every_metric_absent_and_no_exception():
    nvml, _ = open_nvml(init_error="NVML Shared Library Not Found")
    assert not nvml.open()
    sample = nvml.sample()
    assert sample.memory_used_bytes is None and sample.gpu_utilization is None
    summary = NvmlSampler(nvml).stop()
    assert summary.samples == 0
    assert "NVML Shared Library Not Found" in summary.absent["dram_bandwidth_utilization"]
    nvml.close()


def test_real_pynvml_without_a_gpu_is_absent_too():
    # the installed nvidia-ml-py, on a machine that may or may not have a driver
    nvml = Nvml()
    if nvml.open():  # pragma: no cover - only on a GPU machine
        assert nvml.info.memory_total_bytes
        nvml.close()
    else:
        assert nvml.absent["memory_used_bytes"].startswith("NVML unavailable")


def test_older_gpu_has_no_gpm():
    nvml, _ = open_nvml(gpm=False)
    nvml.open()
    nvml.sample()
    time.sleep(0.12)
    sample = nvml.sample()
    assert sample.gpu_utilization == 0.87
    assert sample.dram_bandwidth_utilization is None and sample.sm_occupancy is None
    assert "GPM not supported" in nvml.absent["sm_occupancy"]


def test_driver_without_gpm_functions():
    nvml, _ = open_nvml(gpm=None)
    assert nvml.open()
    assert "Function Not Found" in nvml.absent["dram_bandwidth_utilization"]


def test_mig_reports_memory_but_not_utilisation_or_gpm():
    nvml, _ = open_nvml(mig=True)
    nvml.open()
    sample = nvml.sample()
    assert sample.memory_used_bytes is not None
    assert sample.gpu_utilization is None and sample.dram_bandwidth_utilization is None
    assert "MIG" in nvml.absent["gpu_utilization"] and "MIG" in nvml.absent["sm_occupancy"]


def test_unsupported_utilisation_alone_is_absent():
    nvml, _ = open_nvml(utilisation=False)
    nvml.open()
    sample = nvml.sample()
    assert sample.gpu_utilization is None and sample.memory_used_bytes is not None
    assert "Not Supported" in nvml.absent["gpu_utilization"]
    assert "Not Supported" in nvml.absent["memory_busy"]


def test_sampler_collects_in_the_background():
    nvml, fake = open_nvml()
    nvml.open()
    sampler = NvmlSampler(nvml, interval_s=0.12)
    sampler.start()
    time.sleep(0.45)
    summary = sampler.stop()
    assert summary.samples >= 3
    assert summary.memory_used_peak_bytes == max(s.memory_used_bytes for s in sampler.samples)
    assert summary.gpu_utilization == pytest.approx(0.87)
    assert summary.dram_bandwidth_utilization == pytest.approx(0.625)
    assert summary.sm_occupancy == pytest.approx(0.31)
    assert summary.absent == {}
    nvml.close()
    assert fake.freed == fake.allocated


def test_sampler_refuses_intervals_gpm_cannot_resolve():
    nvml, _ = open_nvml()
    with pytest.raises(ValueError, match=r"0\.1 s"):
        NvmlSampler(nvml, interval_s=0.05)


def test_summary_keeps_a_metric_that_failed_only_sometimes():
    samples = [GpuSample(0.0, gpu_utilization=0.5), GpuSample(1.0, gpu_utilization=None)]
    summary = summarise(samples, {"gpu_utilization": "transient", "sm_occupancy": "GPM not supported"})
    assert summary.gpu_utilization == 0.5
    assert summary.absent == {"sm_occupancy": "GPM not supported"}
