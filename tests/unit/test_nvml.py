"""NvmlSampler against a fake NVML module: readings, missing fields, failures, rate limit."""

from __future__ import annotations

import ctypes
import sys
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from framepool.nvml import GpuReading, GpuSampler, NvmlSampler, device_count

MB = 1024 * 1024


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's names
    pass


class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
    pass


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    pass


class NVMLError_Uninitialized(NVMLError):  # noqa: N801
    pass


@dataclass
class FakeGpu:
    uuid: bytes = b"GPU-0000"
    name: str = "Fake A100"
    util: int = 40
    used: int = 1000 * MB
    total: int = 8000 * MB
    temp: int = 55
    power_mw: int = 120_500
    sm: int = 1400
    mem: int = 5000
    procs: list[tuple[int, int | None]] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False


class FakeNvml:
    """The pynvml functions the sampler calls, over a list of FakeGpu."""

    NVMLError = NVMLError
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.calls: Counter[str] = Counter()
        self.fail_all: type[Exception] | None = None

    def _enter(self, name: str, handle: int | None = None) -> FakeGpu | None:
        self.calls[name] += 1
        if self.fail_all is not None:
            raise self.fail_all()
        if handle is None:
            return None
        gpu = self.gpus[handle]
        if gpu.lost:
            raise NVMLError_GpuIsLost()
        if name in gpu.unsupported:
            raise NVMLError_NotSupported()
        return gpu

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        self._enter("nvmlDeviceGetHandleByIndex", i)
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return self._gpu("nvmlDeviceGetUUID", h).uuid

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._gpu("nvmlDeviceGetName", h).name

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=self._gpu("nvmlDeviceGetUtilizationRates", h).util, memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        g = self._gpu("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(used=g.used, total=g.total, free=g.total - g.used)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._gpu("nvmlDeviceGetTemperature", h).temp

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", h).power_mw

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        g = self._gpu("nvmlDeviceGetClockInfo", h)
        return {self.NVML_CLOCK_SM: g.sm, self.NVML_CLOCK_MEM: g.mem}[kind]

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        g = self._gpu("nvmlDeviceGetComputeRunningProcesses", h)
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in g.procs]

    def _gpu(self, name: str, h: int) -> FakeGpu:
        gpu = self._enter(name, h)
        assert gpu is not None
        return gpu


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(procs=[(10, 300 * MB), (11, 200 * MB), (99, 4000 * MB)]),
            FakeGpu(uuid=b"GPU-1111", name="Fake T4", util=5, used=500 * MB, procs=[(10, None)]),
        ]
    )


def test_reads_two_gpus_with_process_memory() -> None:
    nvml = two_gpus()
    sampler = NvmlSampler(nvml, pids=[10, 11], clock=FakeClock())
    first, second = sampler.read()
    assert sampler.available and sampler.reason is None
    assert first == GpuReading(
        index=0,
        uuid="GPU-0000",
        name="Fake A100",
        utilization_percent=40.0,
        memory_used_mb=1000.0,
        memory_total_mb=8000.0,
        temperature_c=55.0,
        power_w=120.5,
        sm_clock_mhz=1400.0,
        mem_clock_mhz=5000.0,
        process_memory_mb=500.0,
    )
    assert (second.index, second.uuid, second.name, second.utilization_percent) == (
        1,
        "GPU-1111",
        "Fake T4",
        5.0,
    )
    # our only process on GPU 1 reports no memory (WDDM, MIG): unknown, not zero
    assert second.process_memory_mb is None
    assert first.to_dict()["power_w"] == 120.5
    assert nvml.calls["nvmlInit"] == 1


def test_without_pids_process_memory_is_not_asked() -> None:
    nvml = two_gpus()
    (first, _) = NvmlSampler(nvml, clock=FakeClock()).read()
    assert first.process_memory_mb is None
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses"] == 0


def test_a_pid_not_on_the_gpu_counts_zero() -> None:
    (first, _) = NvmlSampler(two_gpus(), pids=[12345], clock=FakeClock()).read()
    assert first.process_memory_mb == 0.0


@pytest.mark.parametrize(
    ("function", "field_name"),
    [
        ("nvmlDeviceGetPowerUsage", "power_w"),
        ("nvmlDeviceGetTemperature", "temperature_c"),
        ("nvmlDeviceGetClockInfo", "sm_clock_mhz"),
        ("nvmlDeviceGetComputeRunningProcesses", "process_memory_mb"),
    ],
)
def test_not_supported_leaves_only_that_field_empty(function: str, field_name: str) -> None:
    nvml = two_gpus()
    nvml.gpus[0].unsupported.add(function)
    first, second = NvmlSampler(nvml, pids=[10, 11], clock=FakeClock()).read()
    assert getattr(first, field_name) is None
    assert first.memory_used_mb == 1000.0 and first.utilization_percent == 40.0
    assert second.power_w == 120.5 and second.temperature_c == 55.0


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (NVMLError_LibraryNotFound, "library not found"),
        (NVMLError_DriverNotLoaded, "driver not loaded"),
        (NVMLError_GpuIsLost, "GPU is lost"),
    ],
)
def test_fatal_error_at_every_call_is_unavailable_not_raised(
    error: type[Exception], reason: str
) -> None:
    nvml = two_gpus()
    nvml.fail_all = error
    clock = FakeClock()
    sampler = NvmlSampler(nvml, clock=clock)
    with capture_logs() as logs:
        assert sampler.read() == []
        for _ in range(5):
            clock.t += 1.0
            assert sampler.read() == []
    assert sampler.available is False
    assert sampler.reason is not None and reason in sampler.reason
    warnings = [e for e in logs if e["event"] == "nvml_unavailable"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert nvml.calls["nvmlInit"] == 1  # no retry inside the backoff
    assert sampler.device_count() == 0


def test_failure_after_init_is_unavailable_too() -> None:
    nvml = two_gpus()
    clock = FakeClock()
    sampler = NvmlSampler(nvml, clock=clock)
    assert len(sampler.read()) == 2
    nvml.fail_all = NVMLError_Uninitialized
    clock.t += 1.0
    assert sampler.read() == []
    assert sampler.available is False and sampler.reason == "NVML is not initialised"


def test_one_lost_gpu_drops_only_that_gpu() -> None:
    nvml = two_gpus()
    nvml.gpus[0].lost = True
    clock = FakeClock()
    sampler = NvmlSampler(nvml, clock=clock)
    with capture_logs() as logs:
        (only,) = sampler.read()
        clock.t += 1.0
        sampler.read()
    assert only.index == 1 and only.name == "Fake T4"
    assert sampler.available
    assert [e["index"] for e in logs if e["event"] == "nvml_device_lost"] == [0]
    nvml.gpus[0].lost = False
    clock.t += 1.0
    assert [r.index for r in sampler.read()] == [0, 1]


def test_reads_at_most_once_per_interval() -> None:
    nvml = two_gpus()
    clock = FakeClock()
    sampler = NvmlSampler(nvml, clock=clock, min_interval_s=1.0)
    first = sampler.read()
    clock.t += 0.5
    nvml.gpus[0].util = 99
    assert sampler.read() == first
    assert nvml.calls["nvmlDeviceGetCount"] == 1
    clock.t += 0.5
    assert sampler.read()[0].utilization_percent == 99.0
    assert nvml.calls["nvmlDeviceGetCount"] == 2


def test_recovers_after_backoff() -> None:
    nvml = two_gpus()
    nvml.fail_all = NVMLError_DriverNotLoaded
    clock = FakeClock()
    sampler = NvmlSampler(nvml, clock=clock, retry_after_s=30.0)
    assert sampler.read() == []
    nvml.fail_all = None  # the driver comes back
    clock.t += 10.0
    assert sampler.read() == [] and not sampler.available  # still backing off
    assert nvml.calls["nvmlInit"] == 1
    clock.t += 25.0
    with capture_logs() as logs:
        assert len(sampler.read()) == 2
    assert sampler.available and sampler.reason is None
    assert nvml.calls["nvmlInit"] == 2
    assert [e["event"] for e in logs] == ["nvml_available"]


def test_missing_pynvml_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    sampler = NvmlSampler(clock=FakeClock())
    assert sampler.read() == []
    assert sampler.available is False
    assert sampler.reason is not None and "pynvml is not installed" in sampler.reason
    assert device_count() == 0


def test_shutdown_and_device_count() -> None:
    nvml = two_gpus()
    sampler = NvmlSampler(nvml, clock=FakeClock())
    assert sampler.device_count() == 2
    sampler.shutdown()
    assert nvml.calls["nvmlShutdown"] == 1
    assert len(sampler.read()) == 2  # initialised again, not served from the old cache
    assert nvml.calls["nvmlInit"] == 2
    assert device_count(two_gpus()) == 2


def test_sampler_satisfies_the_protocol() -> None:
    sampler: GpuSampler = NvmlSampler(two_gpus(), clock=FakeClock())
    assert sampler.available


def _nvml_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_library_present(), reason="this machine has an NVIDIA driver")
def test_real_pynvml_without_driver_is_unavailable() -> None:
    sampler = NvmlSampler()
    assert sampler.read() == []
    assert sampler.available is False
    assert sampler.reason is not None and "library not found" in sampler.reason
    assert device_count() == 0
