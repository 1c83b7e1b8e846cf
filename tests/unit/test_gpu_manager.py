"""GPUManager placement, refusal, release, measurement and stats over fake GPUs."""

from __future__ import annotations

import pytest

from framepool.errors import ModelRefused
from workers.gpu_manager import DeviceMemory, GPUManager


class FakeDevices:
    """Two (or more) GPUs whose free memory and peak the test sets by hand."""

    def __init__(self, totals: list[float], free: list[float] | None = None) -> None:
        self.totals = totals
        self.free = list(free if free is not None else totals)
        self.peak = [0.0 for _ in totals]
        self.allocated = [0.0 for _ in totals]
        self.empty_cache_calls = 0
        self.resets: list[int] = []

    def count(self) -> int:
        return len(self.totals)

    def total_mb(self, i: int) -> float:
        return self.totals[i]

    def free_mb(self, i: int) -> float:
        return self.free[i]

    def peak_mb(self, i: int) -> float:
        return self.peak[i]

    def reset_peak(self, i: int) -> None:
        self.resets.append(i)
        self.peak[i] = self.allocated[i]

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1

    def load(self, i: int, mb: float, transient_mb: float = 0.0) -> None:
        """What a model load does: allocate, peak during warm-up, free some."""
        self.peak[i] = max(self.peak[i], self.allocated[i] + mb + transient_mb)
        self.allocated[i] += mb
        self.free[i] -= mb


def manager(
    devices: DeviceMemory | None,
    *,
    enable_gpu: bool = True,
    memory_reserve_mb: float = 500.0,
    fallback_to_cpu: bool = True,
) -> GPUManager:
    return GPUManager(enable_gpu, memory_reserve_mb, fallback_to_cpu, devices=devices)


def test_goes_to_the_gpu_with_most_room() -> None:
    devs = FakeDevices([8000.0, 16000.0], free=[8000.0, 3000.0])
    gm = manager(devs)
    assert gm.allocate("det", "1", 2000) == "cuda:0"  # cuda:1 is bigger but has less free
    # cuda:0 now has 8000 - 2000 - 500 = 5500 left, cuda:1 3000 - 500 = 2500
    assert gm.allocate("cls", "1", 2000) == "cuda:0"
    # cuda:0: 8000 - 4000 - 500 = 3500 is still the most room
    assert gm.allocate("seg", "1", 3000) == "cuda:0"
    # cuda:0 is down to 500; only cuda:1 fits
    assert gm.allocate("pose", "2", 2400) == "cuda:1"
    assert gm.allocate("pose", "2", 2400) == "cuda:1"  # the same model again: same place


def test_reserve_is_honoured() -> None:
    devs = FakeDevices([4000.0])
    gm = manager(devs, memory_reserve_mb=1000.0, fallback_to_cpu=False)
    assert gm.can_allocate("m", 3000)
    assert not gm.can_allocate("m", 3001)
    assert gm.can_allocate("m", 3000, device=0)
    assert not gm.can_allocate("m", 10, device=1)  # no such GPU
    with pytest.raises(ModelRefused):
        gm.allocate("m", "1", 3001)
    assert gm.allocate("m", "1", 3000) == "cuda:0"


def test_free_memory_taken_by_others_counts() -> None:
    gm = manager(FakeDevices([8000.0], free=[1000.0]))
    assert not gm.can_allocate("m", 1000)
    assert gm.can_allocate("m", 500)


def test_falls_back_to_cpu_when_nothing_fits() -> None:
    gm = manager(FakeDevices([4000.0, 4000.0]))
    assert gm.allocate("big", "1", 6000) == "cpu"
    stats = gm.get_stats()
    assert stats["allocations"][0]["device"] == "cpu"
    assert stats["total_allocated_mb"] == 0.0  # CPU memory is not GPU memory


def test_refusal_names_the_model_and_each_gpu() -> None:
    gm = manager(FakeDevices([4000.0, 6000.0]), fallback_to_cpu=False)
    with pytest.raises(ModelRefused) as err:
        gm.allocate("giant_model", "3", 9000)
    msg = str(err.value)
    assert "'giant_model'" in msg and "9000 MB" in msg
    assert "cuda:0 3500 MB" in msg and "cuda:1 5500 MB" in msg
    assert gm.get_stats()["allocations"] == []


def test_no_gpu_and_no_fallback_is_refused() -> None:
    gm = manager(FakeDevices([]), fallback_to_cpu=False)
    with pytest.raises(ModelRefused, match="no usable CUDA device"):
        gm.allocate("m", "1", 10)


def test_release_frees_room_and_empties_cache() -> None:
    devs = FakeDevices([4000.0])
    gm = manager(devs)
    assert gm.allocate("a", "1", 3000) == "cuda:0"
    assert not gm.can_allocate("b", 3000)
    gm.release("a", "1")
    assert devs.empty_cache_calls == 1
    assert gm.can_allocate("b", 3000)
    gm.release("a", "1")  # unknown now: a no-op
    assert devs.empty_cache_calls == 1
    assert gm.allocate("c", "1", 9000) == "cpu"
    gm.release("c", "1")  # a CPU model does not touch CUDA
    assert devs.empty_cache_calls == 1


def test_measure_records_the_peak_on_the_device() -> None:
    devs = FakeDevices([16000.0, 16000.0])
    devs.load(1, 700)  # another model already resident on cuda:1
    gm = manager(devs)
    assert gm.allocate("x", "1", 2000) == "cuda:0"  # 15500 MB room against 14800
    device = gm.allocate("z", "1", 1000)  # now 13500 against 14800
    assert device == "cuda:1"

    def load_and_warm_up() -> str:
        devs.load(1, 1200, transient_mb=300)
        return "ok"

    result = gm.measure("z", "1", device, load_and_warm_up)
    assert result == "ok"
    assert devs.resets == [1]
    (z,) = [a for a in gm.get_stats()["allocations"] if a["model_id"] == "z"]
    assert z == {
        "model_id": "z",
        "version": "1",
        "device": "cuda:1",
        "estimated_mb": 1000.0,
        "measured_mb": 1500.0,  # the peak above what was resident before
        "measured_by": "cuda_peak",
    }
    # measured replaces estimated in the totals
    assert gm.get_stats()["total_allocated_mb"] == 2000 + 1500


def test_measure_on_cpu_records_nothing() -> None:
    gm = manager(None, enable_gpu=False)
    device = gm.allocate("m", "1", 100)
    assert gm.measure("m", "1", device, lambda: 42) == 42
    (m,) = gm.get_stats()["allocations"]
    assert m["measured_mb"] is None and m["measured_by"] is None


def test_measure_failure_propagates_and_keeps_the_estimate() -> None:
    devs = FakeDevices([8000.0])
    gm = manager(devs)
    device = gm.allocate("m", "1", 100)

    def boom() -> None:
        raise RuntimeError("load failed")

    with pytest.raises(RuntimeError):
        gm.measure("m", "1", device, boom)
    (m,) = gm.get_stats()["allocations"]
    assert m["measured_mb"] is None and m["estimated_mb"] == 100.0


def test_stats_shape() -> None:
    devs = FakeDevices([8000.0, 4000.0], free=[7000.0, 4000.0])
    gm = manager(devs)
    gm.allocate("m", "1", 1000)
    stats = gm.get_stats()
    assert stats["status"] == "available"
    assert stats["device_count"] == 2
    assert stats["devices"] == [
        {
            "index": 0,
            "total_mb": 8000.0,
            "free_mb": 7000.0,
            "allocated_mb": 1000.0,
            "reserve_mb": 500.0,
        },
        {
            "index": 1,
            "total_mb": 4000.0,
            "free_mb": 4000.0,
            "allocated_mb": 0.0,
            "reserve_mb": 500.0,
        },
    ]
    assert stats["allocations"] == [
        {
            "model_id": "m",
            "version": "1",
            "device": "cuda:0",
            "estimated_mb": 1000.0,
            "measured_mb": None,
            "measured_by": None,
        }
    ]
    assert stats["total_allocated_mb"] == 1000.0


def test_disabled_goes_to_cpu_without_touching_devices() -> None:
    devs = FakeDevices([80000.0])
    gm = manager(devs, enable_gpu=False, fallback_to_cpu=False)
    assert not gm.can_allocate("m", 1)
    assert gm.allocate("m", "1", 1) == "cpu"
    stats = gm.get_stats()
    assert stats["status"] == "disabled"
    assert stats["device_count"] == 0 and stats["devices"] == []


def test_no_gpus_is_unavailable() -> None:
    gm = manager(FakeDevices([]))
    assert gm.allocate("m", "1", 10) == "cpu"
    stats = gm.get_stats()
    assert stats["status"] == "unavailable"
    assert stats["device_count"] == 0 and stats["devices"] == []
