"""Placing models on GPUs: the reference GPUManager, with measured memory.

:class:`GPUManager` decides where a model goes before it is loaded: the GPU
with the most room (its free memory and the framepool allocations already made,
less ``GPU_MEMORY_RESERVE_MB``), else the CPU when ``GPU_FALLBACK_TO_CPU`` is on,
else :class:`~framepool.errors.ModelRefused`. :meth:`GPUManager.measure` runs
the caller's load and warm-up and records the CUDA peak it took, which replaces
the manifest's estimate in the totals. Devices are read through the small
:class:`DeviceMemory` seam; :class:`TorchDeviceMemory` is the torch one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from framepool.errors import ModelRefused
from framepool.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")
MB = 1024 * 1024


class DeviceMemory(Protocol):
    """Memory of the CUDA devices this process sees, in MB."""

    def count(self) -> int: ...
    def total_mb(self, i: int) -> float: ...
    def free_mb(self, i: int) -> float: ...
    def peak_mb(self, i: int) -> float: ...
    def reset_peak(self, i: int) -> None: ...
    def empty_cache(self) -> None: ...


class TorchDeviceMemory:
    """:class:`DeviceMemory` through ``torch.cuda`` (0 devices when CUDA is unavailable)."""

    def __init__(self) -> None:
        import torch

        self._cuda = torch.cuda

    def count(self) -> int:
        return int(self._cuda.device_count()) if self._cuda.is_available() else 0

    def total_mb(self, i: int) -> float:
        return float(self._cuda.mem_get_info(i)[1]) / MB

    def free_mb(self, i: int) -> float:
        return float(self._cuda.mem_get_info(i)[0]) / MB

    def peak_mb(self, i: int) -> float:
        return float(self._cuda.max_memory_allocated(i)) / MB

    def reset_peak(self, i: int) -> None:
        self._cuda.reset_peak_memory_stats(i)

    def empty_cache(self) -> None:
        self._cuda.empty_cache()


@dataclass
class Allocation:
    """Where one model version lives and how much memory it takes."""

    model_id: str
    version: str
    device: str  # "cuda:N" or "cpu"
    estimated_mb: float
    measured_mb: float | None = None

    @property
    def measured_by(self) -> str | None:
        return "cuda_peak" if self.measured_mb is not None else None

    @property
    def effective_mb(self) -> float:
        return self.measured_mb if self.measured_mb is not None else self.estimated_mb

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "version": self.version,
            "device": self.device,
            "estimated_mb": self.estimated_mb,
            "measured_mb": self.measured_mb,
            "measured_by": self.measured_by,
        }


def _cuda_index(device: str) -> int | None:
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else None


class GPUManager:
    """Tracks per-model allocations and picks a device for each; thread-safe."""

    def __init__(
        self,
        enable_gpu: bool,
        memory_reserve_mb: float,
        fallback_to_cpu: bool,
        devices: DeviceMemory | None = None,
    ) -> None:
        self.enable_gpu = enable_gpu
        self.memory_reserve_mb = memory_reserve_mb
        self.fallback_to_cpu = fallback_to_cpu
        # CUDA is not touched at all when GPUs are disabled.
        self._devices = devices if devices is not None or not enable_gpu else TorchDeviceMemory()
        self._allocations: dict[tuple[str, str], Allocation] = {}
        self._lock = threading.RLock()
        self._measure_lock = threading.Lock()  # one measurement at a time: peaks must not mix

    # --- placement ---

    def can_allocate(self, model_id: str, required_mb: float, device: int | None = None) -> bool:
        """Whether ``required_mb`` plus the reserve fits on ``device`` (or on any GPU)."""
        with self._lock:
            rooms = self._rooms()
            if device is not None:
                rooms = {i: r for i, r in rooms.items() if i == device}
            fits = any(r >= required_mb for r in rooms.values())
        log.debug("gpu_can_allocate", model_id=model_id, required_mb=required_mb, fits=fits)
        return fits

    def allocate(self, model_id: str, version: str, required_mb: float) -> str:
        """Record the model on the GPU with the most room; ``"cuda:N"`` or ``"cpu"``.

        A model version already allocated keeps its device. Raises
        :class:`ModelRefused` when no GPU fits and CPU fallback is off.
        """
        with self._lock:
            key = (model_id, version)
            if key in self._allocations:
                return self._allocations[key].device
            rooms = self._rooms()
            fitting = {i: r for i, r in rooms.items() if r >= required_mb}
            if fitting:
                device = f"cuda:{max(fitting, key=lambda i: fitting[i])}"
            elif not self.enable_gpu or self.fallback_to_cpu:
                device = "cpu"
                if self.enable_gpu:
                    log.warning(
                        "gpu_fallback_cpu",
                        model_id=model_id,
                        version=version,
                        required_mb=required_mb,
                        room_mb=self._rounded(rooms),
                    )
            else:
                msg = self._refusal(model_id, version, required_mb, rooms)
                log.error("gpu_refused", model_id=model_id, version=version, reason=msg)
                raise ModelRefused(msg)
            self._allocations[key] = Allocation(model_id, version, device, float(required_mb))
        log.info(
            "gpu_allocated",
            model_id=model_id,
            version=version,
            device=device,
            required_mb=required_mb,
        )
        return device

    def release(self, model_id: str, version: str) -> None:
        """Forget the model's allocation and return cached CUDA memory to the driver."""
        with self._lock:
            alloc = self._allocations.pop((model_id, version), None)
        if alloc is None:
            log.debug("gpu_release_unknown", model_id=model_id, version=version)
            return
        if alloc.device != "cpu" and self._devices is not None:
            self._devices.empty_cache()
        log.info("gpu_released", model_id=model_id, version=version, device=alloc.device)

    def measure(self, model_id: str, version: str, device: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (load + warm-up at the largest batch) and record its CUDA peak.

        The measured MB is the peak allocated on ``device`` during ``fn`` above
        what was allocated before; on the CPU nothing is measured (``None``).
        """
        index = _cuda_index(device)
        if index is None or self._devices is None:
            result = fn()
            measured: float | None = None
        else:
            with self._measure_lock:
                self._devices.reset_peak(index)
                before = self._devices.peak_mb(index)
                result = fn()
                measured = max(0.0, self._devices.peak_mb(index) - before)
        with self._lock:
            alloc = self._allocations.get((model_id, version))
            if alloc is None:
                log.debug("gpu_measure_unallocated", model_id=model_id, version=version)
                alloc = Allocation(model_id, version, device, 0.0)
                self._allocations[(model_id, version)] = alloc
            alloc.measured_mb = measured
        log.info(
            "gpu_measured",
            model_id=model_id,
            version=version,
            device=device,
            estimated_mb=alloc.estimated_mb,
            measured_mb=measured,
        )
        return result

    # --- statistics ---

    def get_stats(self) -> dict[str, Any]:
        """The reference shape: status, device_count, devices, allocations, total_allocated_mb.

        ``total_allocated_mb`` sums GPU allocations (measured when known, else estimated).
        """
        with self._lock:
            count = self._count()
            devices = [
                {
                    "index": i,
                    "total_mb": round(self._devices.total_mb(i), 1),
                    "free_mb": round(self._devices.free_mb(i), 1),
                    "allocated_mb": round(self._allocated_mb(i), 1),
                    "reserve_mb": self.memory_reserve_mb,
                }
                for i in range(count)
                if self._devices is not None
            ]
            allocations = [a.to_dict() for a in self._allocations.values()]
            total = sum(a.effective_mb for a in self._allocations.values() if a.device != "cpu")
        status = "disabled" if not self.enable_gpu else "available" if count else "unavailable"
        return {
            "status": status,
            "device_count": count,
            "devices": devices,
            "allocations": allocations,
            "total_allocated_mb": round(total, 1),
        }

    # --- internals (called with the lock held) ---

    def _count(self) -> int:
        if not self.enable_gpu or self._devices is None:
            return 0
        try:
            return self._devices.count()
        except Exception as exc:
            log.warning("gpu_count_failed", error=repr(exc))
            return 0

    def _allocated_mb(self, index: int) -> float:
        device = f"cuda:{index}"
        return sum(a.effective_mb for a in self._allocations.values() if a.device == device)

    def _rooms(self) -> dict[int, float]:
        """MB each readable GPU can still give a new model, after the reserve."""
        rooms: dict[int, float] = {}
        for i in range(self._count()):
            assert self._devices is not None
            try:
                free, total = self._devices.free_mb(i), self._devices.total_mb(i)
            except Exception as exc:
                log.warning("gpu_memory_unreadable", index=i, error=repr(exc))
                continue
            rooms[i] = min(free, total - self._allocated_mb(i)) - self.memory_reserve_mb
        return rooms

    @staticmethod
    def _rounded(rooms: dict[int, float]) -> dict[str, float]:
        return {f"cuda:{i}": round(r, 1) for i, r in rooms.items()}

    def _refusal(
        self, model_id: str, version: str, required_mb: float, rooms: dict[int, float]
    ) -> str:
        if rooms:
            where = ", ".join(f"cuda:{i} {r:.0f} MB" for i, r in rooms.items())
            room = f"room per GPU after the {self.memory_reserve_mb:.0f} MB reserve: {where}"
        else:
            room = "no usable CUDA device"
        return (
            f"model {model_id!r} version {version!r} needs {required_mb:.0f} MB of GPU memory; "
            f"{room}; GPU_FALLBACK_TO_CPU is off"
        )
