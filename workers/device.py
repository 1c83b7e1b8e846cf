"""Pinning a worker to its device before torch is imported (no torch here)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from framepool.errors import BadInput

_CUDA = re.compile(r"^cuda:(\d+)$")


#: what the user may have set to steer OpenMP's waiting; any of them and we set none
_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: "spin": libgomp counts ~100k spins per ms, so ~0.3 ms awake after a parallel
#: region (libgomp's default is 300k, ~3 ms); Intel's runtime counts in ms
SPIN_ENV = {"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1"}
PASSIVE_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def cpu_wait_policy(setting: str, model_waits: Iterable[str]) -> str:
    """``CPU_WAIT_POLICY`` resolved: "auto" spins when any served model asks for it."""
    if setting != "auto":
        return setting
    return "spin" if "spin" in model_waits else "passive"


def pin_device(device: str, cpu_wait: str = "passive") -> str:
    """Set ``CUDA_VISIBLE_DEVICES`` for ``cuda:N``; return the device name to use in-process.

    ``cuda:N`` becomes ``cuda:0`` inside the process (it sees one GPU), ``cpu``
    hides every GPU, and ``auto`` leaves the choice to :func:`resolve_device`.

    ``cpu_wait`` ("passive" or "spin") sets how torch's OpenMP threads wait between
    parallel regions, unless the user set one of ``_WAIT_VARS``. libgomp's default
    spins ~3 ms after each region, on a core the worker's consumer, decode and
    runner threads (and Redis) need: on 2 cores at 10 frames/s that made
    shape_detector's forward 2-6x slower and its round-trip p99 ~45 ms instead of
    ~15, so small models sleep at once ("passive"). A resnet18 forward pass is
    ~60 parallel regions, though, and waking a sleeping thread for each one cost
    it 40-50 % (batch 1: 41 ms spinning, 62 ms passive; the open loop of ``bench
    peers`` p99 136-152 ms against 172-285), so big models spin ~0.3 ms ("spin"):
    awake between layers, asleep soon after the batch (docs/benchmarks.md).
    """
    if cpu_wait not in ("passive", "spin"):
        raise BadInput(f"CPU wait policy must be passive or spin, got {cpu_wait!r}")
    if "torch" in __import__("sys").modules:
        raise RuntimeError("pin_device must run before torch is imported")
    if not any(v in os.environ for v in _WAIT_VARS):
        os.environ.update(SPIN_ENV if cpu_wait == "spin" else PASSIVE_ENV)
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu"
    if device == "auto":
        return "auto"
    m = _CUDA.match(device)
    if not m:
        raise BadInput(f"device must be auto, cpu or cuda:N, got {device!r}")
    os.environ["CUDA_VISIBLE_DEVICES"] = m.group(1)
    return "cuda:0"


def resolve_device(pinned: str, enable_gpu: bool, fallback_to_cpu: bool) -> str:
    """``auto`` → ``cuda:0`` when a GPU is usable, else ``cpu`` (imports torch)."""
    import torch

    if pinned == "cpu" or not enable_gpu:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if pinned == "auto" or fallback_to_cpu:
        return "cpu"
    raise BadInput(f"{pinned} requested but no CUDA device is usable (GPU_FALLBACK_TO_CPU=false)")
