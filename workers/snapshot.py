"""The worker's heartbeat snapshot: who and where, its GPU, its models, its counters.

One JSON document per worker, the only thing the monitor needs from it:

- identity: ``worker``, ``hostname``, ``pid``, ``device``, ``gpu`` (index in the
  process, UUID and name, so series from different hosts never mix), ``mps`` (the
  MPS daemon's pipe directory its CUDA work goes through, else null:
  ``workers/mps.py``);
- ``nvml``: the NVML reading of the GPU(s) this worker uses (``available``
  false with a reason when NVML cannot be read);
- ``gpu_manager``: placements and measured memory;
- ``models``: per model its state, version, device, memory, batch cap, counters,
  stage-timing histograms (as counts, ``workers.heartbeat.wire_stats``) and profiler
  statistics;
- ``kernels``: the stamp and row counts of the kernel tables, which the heartbeat
  writes under a key of their own (:class:`workers.heartbeat.KernelIndex`).
"""

from __future__ import annotations

import os
import socket
import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from framepool import keys
from workers.heartbeat import KernelIndex, KernelTables, wire_stats

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

#: Kernels per model in a heartbeat (the most total time first).
HEARTBEAT_KERNELS = 100


@lru_cache(maxsize=16)
def gpu_identity(device: str) -> dict[str, Any] | None:
    """Index, UUID and name of a ``cuda:N`` device as this process sees it."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    index = int(device.partition(":")[2] or 0)
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    return {
        "index": index,
        "uuid": f"GPU-{uuid}" if uuid is not None else None,
        "name": props.name,
        "total_memory_mb": round(props.total_memory / 2**20, 1),
    }


def mps_pipe(device: str) -> str | None:
    """The MPS pipe directory a worker on ``device`` was handed (``framepool up`` and
    ``bench gpu`` set ``CUDA_MPS_PIPE_DIRECTORY`` for the workers that share a GPU),
    else None; a CPU worker has none whatever its environment says."""
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
    return (pipe or None) if device.startswith("cuda") else None


def _nvml(runtime: WorkerRuntime, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    sampler = runtime.sampler
    if sampler is None:
        return {"available": False, "reason": "no NVML sampler in this worker", "gpus": []}
    readings = sampler.read()
    uuids = {g["uuid"] for g in gpus if g.get("uuid")}
    mine = [r.to_dict() for r in readings if not uuids or r.uuid in uuids] if gpus else []
    return {"available": sampler.available, "reason": sampler.reason, "gpus": mine}


def build_snapshot(runtime: WorkerRuntime) -> dict[str, Any]:
    devices = {runtime.device, *(s.device for s in runtime.slots.values() if s.device)}
    gpus = [g for d in sorted(devices) if (g := gpu_identity(d)) is not None]
    gpu_stats = runtime.gpu.get_stats()
    placed = {a["model_id"]: a for a in gpu_stats.get("allocations", [])}
    models: dict[str, Any] = {}
    totals = {"frames": 0, "ok": 0, "errors": 0, "expired": 0, "batches": 0}
    for model_id, slot in runtime.slots.items():
        entry: dict[str, Any] = {
            **slot.health.snapshot(),
            "version": slot.version,
            "device": slot.device,
            "queue": keys.queue_name(model_id),
            "estimated_mb": placed.get(model_id, {}).get("estimated_mb"),
            "measured_mb": placed.get(model_id, {}).get("measured_mb"),
        }
        runner = runtime.runners.get(model_id)
        if runner is not None:
            stats = runner.stats.snapshot()
            for k in totals:
                totals[k] += stats[k]
            entry["max_batch_size"] = runner.max_batch_size
            entry["batch_cap"] = runner.cap.snapshot()
            entry["in_flight"] = runner.in_flight
            entry["stats"] = wire_stats(stats)
            if runner.profiler is not None:
                entry["profiler"] = runner.profiler.stats()
        models[model_id] = entry
    return {
        "worker": runtime.name,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "runtime_id": runtime.settings.runtime_id,
        "state": runtime.state,
        "device": runtime.device,
        "gpu": gpus[0] if gpus else None,
        "gpus": gpus,
        "mps": mps_pipe(runtime.device),
        "started_at": runtime.started_at,
        "updated_at": time.time(),
        "heartbeat_interval_s": runtime.settings.heartbeat_interval_seconds,
        "nvml": _nvml(runtime, gpus),
        "gpu_manager": gpu_stats,
        "models": models,
        "totals": totals,
        "kernels": kernel_index(runtime),
    }


def kernel_index(runtime: WorkerRuntime) -> KernelIndex:
    """The stamp and row counts of the worker's kernel tables; the rows when asked.

    The stamp is the process, its start and the sum of the tables' versions: it moves
    whenever a row changes and is never the same for two runs of a worker."""
    tables = {m: r.profiler.table for m, r in runtime.runners.items() if r.profiler is not None}
    version = sum(t.version for t in tables.values())
    stamp = f"{os.getpid()}-{runtime.started_at:.6f}-{version}"

    def rows() -> KernelTables:
        return {m: t.top(HEARTBEAT_KERNELS) for m, t in tables.items()}

    return KernelIndex(stamp, {m: min(len(t), HEARTBEAT_KERNELS) for m, t in tables.items()}, rows)
