"""NVML wrapped once: GPU readings that never raise (no torch here).

:class:`NvmlSampler` takes every GPU's readings in one tick, at most once per
``min_interval_s``, and turns any NVML failure into "not available" the way
nvitop's ``libnvml`` does: a missing library, an unloaded driver or a lost GPU
gives ``available=False`` with a readable ``reason`` (logged once) and an empty
list; a field the GPU does not support is ``None``; a lost GPU drops out of the
list alone. Initialisation is retried after a backoff, so a driver that comes
back is picked up. NVML ignores ``CUDA_VISIBLE_DEVICES``: indices are the
machine's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from framepool.log import get_logger

log = get_logger(__name__)

MB = 1024 * 1024

# Errors after which NVML (or, for GpuIsLost inside one device's readings, that
# GPU) is unusable until initialised again; the readable reason for each.
_FATAL = {
    "NVMLError_LibraryNotFound": "NVML library not found (no NVIDIA driver installed)",
    "NVMLError_DriverNotLoaded": "NVIDIA driver not loaded",
    "NVMLError_GpuIsLost": "GPU is lost",
    "NVMLError_Uninitialized": "NVML is not initialised",
}


@dataclass
class GpuReading:
    """One GPU at one tick; a field NVML cannot give is ``None``."""

    index: int
    uuid: str | None
    name: str | None
    utilization_percent: float | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    temperature_c: float | None
    power_w: float | None
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    process_memory_mb: float | None  # used by the pids asked about; None when unknown

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GpuSampler(Protocol):
    """Anything that reads GPUs; ``read()`` never raises."""

    @property
    def available(self) -> bool: ...

    @property
    def reason(self) -> str | None: ...

    def read(self) -> list[GpuReading]: ...


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _num(value: Any, scale: float = 1.0) -> float | None:
    return None if value is None else float(value) / scale


class NvmlSampler:
    """Rate-limited, never-raising GPU readings from NVML (see the module docstring).

    ``nvml`` is the ``pynvml`` module (imported on first read when not given);
    ``pids`` are the processes whose GPU memory ``process_memory_mb`` sums
    (``None``: not asked, the field stays ``None``).
    """

    def __init__(
        self,
        nvml: Any = None,
        *,
        pids: Iterable[int] | None = None,
        min_interval_s: float = 1.0,
        retry_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self.pids: frozenset[int] | None = None if pids is None else frozenset(pids)
        self._min_interval = min_interval_s
        self._retry_after = retry_after_s
        self._clock = clock
        self._lock = threading.RLock()
        self._initialised = False
        self._ticked = False
        self._available = False
        self._reason: str | None = None
        self._failed = False  # failed since the last success (for the recovery log)
        self._retry_at = float("-inf")
        self._last_tick = float("-inf")
        self._cache: list[GpuReading] = []
        self._lost: set[int] = set()

    @property
    def available(self) -> bool:
        if not self._ticked:
            self.read()
        return self._available

    @property
    def reason(self) -> str | None:
        if not self._ticked:
            self.read()
        return self._reason

    def read(self) -> list[GpuReading]:
        """Every GPU's readings; NVML is called at most once per ``min_interval_s``."""
        with self._lock:
            now = self._clock()
            if self._ticked and now - self._last_tick < self._min_interval:
                return list(self._cache)
            self._ticked, self._last_tick = True, now
            self._cache = self._tick(now)
            return list(self._cache)

    def device_count(self) -> int:
        """Number of GPUs NVML sees (0 when unavailable)."""
        with self._lock:
            if not self._ensure_init(self._clock()):
                return 0
            try:
                return int(self._nvml.nvmlDeviceGetCount())
            except Exception as exc:
                self._fail(self._reason_for(exc), self._clock())
                return 0

    def shutdown(self) -> None:
        """Release NVML; a later read initialises it again."""
        with self._lock:
            self._shutdown_quietly()
            self._last_tick, self._cache = float("-inf"), []

    # --- internals (called with the lock held) ---

    def _ensure_init(self, now: float) -> bool:
        if self._initialised:
            return True
        if now < self._retry_at:
            return False
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except Exception as exc:
            self._fail(self._reason_for(exc), now)
            return False
        if self._failed:
            log.info("nvml_available", previous_reason=self._reason)
        self._initialised, self._available, self._reason, self._failed = True, True, None, False
        return True

    def _tick(self, now: float) -> list[GpuReading]:
        if not self._ensure_init(now):
            return []
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
            readings = [r for i in range(count) if (r := self._read_device(i)) is not None]
        except Exception as exc:
            self._fail(self._reason_for(exc), now)
            return []
        if count and not readings:
            self._fail(f"all {count} GPUs are unreadable", now)
        return readings

    def _read_device(self, index: int) -> GpuReading | None:
        """One GPU's readings, or None when that GPU alone fails (driver-wide errors raise)."""
        nv = self._nvml
        try:
            h = nv.nvmlDeviceGetHandleByIndex(index)
            uuid, name = self._field(nv.nvmlDeviceGetUUID, h), self._field(nv.nvmlDeviceGetName, h)
            util = self._field(nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._field(nv.nvmlDeviceGetMemoryInfo, h)
            temp = self._field(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            power = self._field(nv.nvmlDeviceGetPowerUsage, h)
            sm = self._field(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
            memclk = self._field(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM)
            proc_mb = self._process_memory_mb(h)
        except Exception as exc:
            if self._kind(exc) not in (None, "NVMLError_GpuIsLost"):
                raise
            if index not in self._lost:
                self._lost.add(index)
                log.warning("nvml_device_lost", index=index, reason=self._reason_for(exc))
            return None
        if index in self._lost:
            self._lost.discard(index)
            log.info("nvml_device_back", index=index)
        return GpuReading(
            index=index,
            uuid=_text(uuid),
            name=_text(name),
            utilization_percent=None if util is None else _num(util.gpu),
            memory_used_mb=None if mem is None else _num(mem.used, MB),
            memory_total_mb=None if mem is None else _num(mem.total, MB),
            temperature_c=_num(temp),
            power_w=_num(power, 1000.0),  # NVML reports milliwatts
            sm_clock_mhz=_num(sm),
            mem_clock_mhz=_num(memclk),
            process_memory_mb=proc_mb,
        )

    def _field(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one NVML getter; None when this GPU or driver cannot give it."""
        try:
            return fn(*args)
        except Exception as exc:
            if self._kind(exc) in _FATAL:
                raise
            return None

    def _process_memory_mb(self, handle: Any) -> float | None:
        if self.pids is None:
            return None
        procs = self._field(self._nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        if procs is None:
            return None
        mine = [p for p in procs if p.pid in self.pids]
        known = [p.usedGpuMemory for p in mine if p.usedGpuMemory is not None]
        if mine and not known:
            return None
        return sum(known) / MB

    def _shutdown_quietly(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:  # a lost driver cannot shut down either
                log.debug("nvml_shutdown_failed", error=repr(exc))

    def _kind(self, exc: BaseException) -> str | None:
        """The fatal NVML error class name ``exc`` is an instance of, if any."""
        for name in _FATAL:
            cls = getattr(self._nvml, name, None)
            if isinstance(cls, type) and isinstance(exc, cls):
                return name
        return None

    def _reason_for(self, exc: BaseException) -> str:
        if isinstance(exc, ImportError):
            return f"pynvml is not installed ({exc})"
        kind = self._kind(exc)
        if kind is not None:
            return _FATAL[kind]
        return f"NVML error: {type(exc).__name__}: {exc}"

    def _fail(self, reason: str, now: float) -> None:
        """NVML is unusable: say why (logged once per reason), retry init after the backoff."""
        self._shutdown_quietly()
        if not self._failed or reason != self._reason:
            log.warning("nvml_unavailable", reason=reason, retry_in_s=self._retry_after)
        else:
            log.debug("nvml_still_unavailable", reason=reason)
        self._available, self._reason, self._failed = False, reason, True
        self._retry_at = now + self._retry_after


def device_count(nvml: Any = None) -> int:
    """Number of NVIDIA GPUs on this machine via NVML (0 when unavailable); never raises."""
    sampler = NvmlSampler(nvml)
    try:
        return sampler.device_count()
    finally:
        sampler.shutdown()
