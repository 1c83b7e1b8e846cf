"""``framepool up``'s workers, placed: which process goes on which GPU with which models.

No torch here: each worker is its own process (``framepool worker``) started with
``CUDA_VISIBLE_DEVICES`` set to its GPU (and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so
CUDA numbers GPUs as NVML does), so CUDA is never touched in a process that forks.

:func:`plan_workers` turns ``--gpus all|none|0,1 --workers-per-gpu N --models a,b``
into :class:`WorkerSpec` s named ``gpu<i>-<k>@<host>`` (``cpu-<k>@<host>`` without a
GPU). Models are placed by the :class:`~workers.gpu_manager.GPUManager` on each
GPU's memory as NVML reads it now: a model goes to the GPUs where N copies of it
(one per worker) fit beside the models before it in ``--models`` and
``GPU_MEMORY_RESERVE_MB``; one that fits on no GPU goes to CPU workers under
``GPU_FALLBACK_TO_CPU``, else the plan is refused (:class:`ModelRefused`).
CPU workers share the host's cores: each gets ``OMP_NUM_THREADS`` = cores // CPU
workers (at least 1) unless the environment sets it, so N of them do not run N x
cores torch threads (docs/benchmarks.md, `bench ab`: on 2 cores, two workers of one
thread each served resnet18 1.13x faster than one of two, with p99 0.77x).
:class:`~workers.supervisor.Supervisor` starts and keeps them running.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from framepool.errors import BadInput, ModelRefused
from framepool.log import get_logger
from framepool.manifest import discover
from framepool.nvml import GpuReading, NvmlSampler, device_count
from framepool.settings import Settings
from workers.gpu_manager import GPUManager

log = get_logger(__name__)


@dataclass
class WorkerSpec:
    name: str
    device: str
    models: Sequence[str]
    concurrency: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: like ``env``, but the supervisor's own environment wins over these
    env_defaults: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        cmd = [sys.executable, "-m", "framepool.cli", "worker", "--device", self.device]
        cmd += ["--models", ",".join(self.models), "--name", self.name]
        if self.concurrency:
            cmd += ["--concurrency", str(self.concurrency)]
        return cmd


def pin_env(gpu: int | None) -> dict[str, str]:
    """The environment that pins a worker to NVML's GPU ``gpu`` (``None``: no GPU)."""
    if gpu is None:
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {"CUDA_VISIBLE_DEVICES": str(gpu), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def host_cpus() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        return max(1, os.cpu_count() or 1)


def cpu_threads(cpus: int, cpu_workers: int) -> dict[str, str]:
    """The torch (OpenMP) threads of each of ``cpu_workers`` CPU workers on ``cpus`` cores."""
    return {"OMP_NUM_THREADS": str(max(1, cpus // max(1, cpu_workers)))}


def detect_gpus() -> int:
    """Number of NVIDIA GPUs via NVML (0 when no driver or library)."""
    return device_count()


def gpu_ids(gpus: str, count: Callable[[], int] = detect_gpus) -> list[int]:
    """``all`` → every GPU NVML sees, ``none`` → [], ``0,1`` → [0, 1]."""
    if gpus == "none":
        return []
    if gpus == "all":
        return list(range(count()))
    try:
        ids = [int(x) for x in gpus.split(",") if x.strip()]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise BadInput(f"--gpus must be all, none or a list like 0,1; got {gpus!r}")
    return ids


class _NoAllocator:
    """What GPUManager asks of a device beyond its memory: nothing allocates in a plan."""

    def peak_mb(self, i: int) -> float:
        return 0.0

    def reset_peak(self, i: int) -> None:
        return None

    def empty_cache(self) -> None:
        return None


class NvmlMemory(_NoAllocator):
    """GPU memory as one NVML reading shows it (machine indices), for planning only."""

    def __init__(self, readings: Sequence[GpuReading]) -> None:
        self._by_index = {r.index: r for r in readings}

    @classmethod
    def read(cls) -> NvmlMemory | None:
        sampler = NvmlSampler()
        try:
            readings = sampler.read()
        finally:
            sampler.shutdown()
        return cls(readings) if readings else None

    def indices(self) -> list[int]:
        return sorted(self._by_index)

    def knows(self, i: int) -> bool:
        r = self._by_index.get(i)
        return r is not None and r.memory_total_mb is not None and r.memory_used_mb is not None

    def count(self) -> int:
        return len(self._by_index)

    def total_mb(self, i: int) -> float:
        return float(self._by_index[i].memory_total_mb or 0.0)

    def free_mb(self, i: int) -> float:
        r = self._by_index[i]
        return float((r.memory_total_mb or 0.0) - (r.memory_used_mb or 0.0))


class _OneGpu(_NoAllocator):
    """GPU ``index`` of ``memory`` shown as a machine's only GPU (one GPUManager per GPU).

    Its total is the memory free now: the manager takes the plan's own allocations
    off ``total - allocated``, which NVML's free memory does not yet show."""

    def __init__(self, memory: NvmlMemory, index: int) -> None:
        self.memory, self.index = memory, index

    def count(self) -> int:
        return 1

    def total_mb(self, i: int) -> float:
        return self.memory.free_mb(self.index)

    def free_mb(self, i: int) -> float:
        return self.memory.free_mb(self.index)


@dataclass
class Plan:
    """The workers to start, and what placement had to say (printed by ``framepool up``)."""

    specs: list[WorkerSpec]
    notes: list[str] = field(default_factory=list)


def _fits_every_slot(gm: GPUManager, model: str, mb: float, slots: int) -> bool:
    """Allocate ``slots`` copies of ``model`` (one per worker), or none of them."""
    done: list[str] = []
    try:
        for k in range(slots):
            gm.allocate(f"{model}#{k}", "plan", mb)
            done.append(f"{model}#{k}")
    except ModelRefused:
        for key in done:
            gm.release(key, "plan")
        return False
    return True


def plan_workers(
    gpus: str,
    workers_per_gpu: int,
    models: Sequence[str],
    host: str,
    *,
    memory: NvmlMemory | None = None,
    model_mb: Mapping[str, float] | None = None,
    reserve_mb: float = 0.0,
    fallback_to_cpu: bool = True,
    count: Callable[[], int] = detect_gpus,
    cpus: Callable[[], int] = host_cpus,
) -> Plan:
    """The workers for ``--gpus``, ``--workers-per-gpu`` and ``--models`` (module docstring).

    Without ``memory`` (NVML unreadable) every model goes to every GPU and each
    worker's own GPU manager places it when it loads."""
    if workers_per_gpu < 1:
        raise BadInput(f"--workers-per-gpu must be >= 1, got {workers_per_gpu}")
    ids = gpu_ids(gpus, count)
    slots = range(1, workers_per_gpu + 1)
    notes: list[str] = []
    placed: dict[int, list[str]] = {i: list(models) for i in ids}
    if ids and memory is not None:
        for i in ids:
            if not memory.knows(i):
                notes.append(f"GPU {i}: memory unknown to NVML; each worker places its own models")
                continue
            gm = GPUManager(True, reserve_mb, False, devices=_OneGpu(memory, i))
            placed[i] = []
            for m in models:
                mb = (model_mb or {}).get(m, 0.0)
                taken = gm.get_stats()["total_allocated_mb"]
                if _fits_every_slot(gm, m, mb, workers_per_gpu):
                    placed[i].append(m)
                    continue
                notes.append(
                    f"GPU {i}: {m} left off: {workers_per_gpu} x {mb:g} MB do not fit in "
                    f"{memory.free_mb(i):.0f} MB free less {reserve_mb:g} MB reserve "
                    f"and {taken:g} MB for the models before it"
                )
            if not placed[i]:
                notes.append(f"GPU {i}: no model fits, no worker started there")
    elif ids:
        notes.append("GPU memory unreadable (NVML): every model goes to every GPU")
    nowhere = [m for m in models if not any(m in ms for ms in placed.values())]
    if ids and nowhere and not fallback_to_cpu:
        raise ModelRefused(
            f"{', '.join(nowhere)} fit(s) on no GPU ({'; '.join(notes)}); GPU_FALLBACK_TO_CPU is off"
        )
    specs = [
        WorkerSpec(f"gpu{i}-{k}@{host}", f"cuda:{i}", ms, env=pin_env(i))
        for i, ms in placed.items()
        if ms
        for k in slots
    ]
    cpu_models = nowhere if ids else list(models)
    if cpu_models:
        if ids:
            notes.append(f"{', '.join(cpu_models)} on CPU workers (GPU_FALLBACK_TO_CPU)")
        cores = cpus()
        if not ids and len(slots) == 1 and cores > 1:
            notes.append(
                f"one CPU worker with {cores} torch threads: {cores} workers of one thread "
                f"each usually serve more frames with a lower p99 (--workers-per-gpu "
                f"{cores}; docs/scaling.md)"
            )
        threads = cpu_threads(cores, len(slots))
        specs += [
            WorkerSpec(
                f"cpu-{k}@{host}", "cpu", cpu_models, env=pin_env(None), env_defaults=threads
            )  # fmt: skip
            for k in slots
        ]
    for note in notes:
        log.warning("placement_note", note=note)
    return Plan(specs, notes)


def plan_for(
    settings: Settings, gpus: str, workers_per_gpu: int, models: Sequence[str], host: str
) -> Plan:
    """:func:`plan_workers` with this machine's GPUs (NVML) and the models' manifests."""
    if not settings.enable_gpu and gpus != "none":
        plan = plan_workers("none", workers_per_gpu, models, host)
        plan.notes.insert(0, "ENABLE_GPU=false: CPU workers only")
        return plan
    manifests, _ = discover(settings.models_root)
    n = detect_gpus() if gpus == "all" else 0
    ids = gpu_ids(gpus, lambda: n)
    memory = NvmlMemory.read() if ids else None
    missing = [i for i in ids if memory is not None and i not in memory.indices()]
    if missing and memory is not None:
        raise BadInput(
            f"--gpus {gpus}: no GPU {', '.join(map(str, missing))} on this machine "
            f"(NVML sees {', '.join(map(str, memory.indices()))})"
        )
    return plan_workers(
        gpus,
        workers_per_gpu,
        models,
        host,
        memory=memory,
        model_mb={m: manifests[m].memory_mb for m in models if m in manifests},
        reserve_mb=settings.gpu_memory_reserve_mb,
        fallback_to_cpu=settings.gpu_fallback_to_cpu,
        count=lambda: n,
    )
