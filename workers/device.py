"""Pinning a worker to its device before torch is imported (no torch here)."""

from __future__ import annotations

import os
import re

from framepool.errors import BadInput

_CUDA = re.compile(r"^cuda:(\d+)$")


def pin_device(device: str) -> str:
    """Set ``CUDA_VISIBLE_DEVICES`` for ``cuda:N``; return the device name to use in-process.

    ``cuda:N`` becomes ``cuda:0`` inside the process (it sees one GPU), ``cpu``
    hides every GPU, and ``auto`` leaves the choice to :func:`resolve_device`.
    """
    if "torch" in __import__("sys").modules:
        raise RuntimeError("pin_device must run before torch is imported")
    # torch's OpenMP threads spin after each parallel region by default, on a core
    # the worker's consumer, decode and runner threads (and Redis) need: on 2 cores
    # at 10 frames/s that made shape_detector's forward 2-6x slower and the
    # producer's round-trip p99 ~45 ms instead of ~15 (docs/benchmarks.md). A
    # value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
