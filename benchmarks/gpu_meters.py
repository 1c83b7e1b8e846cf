"""What ``bench gpu`` measures beside the frames: the GPU's utilization (NVML) and
the CPU time each process spent per frame."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from benchmarks.harness import proc_cpu_s
from benchmarks.peers_stats import WARMUP_FRAC

UTIL_EVERY_S = 0.1


class UtilSampler:
    """NVML's utilization of GPU ``index`` every 0.1 s in a thread, while open."""

    def __init__(self, index: int | None) -> None:
        from framepool.nvml import NvmlSampler

        self.index = index
        self.samples: list[tuple[float, float]] = []
        self._nvml = NvmlSampler(min_interval_s=UTIL_EVERY_S / 2) if index is not None else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="util", daemon=True)

    def __enter__(self) -> UtilSampler:
        if self._nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def _run(self) -> None:
        assert self._nvml is not None
        while not self._stop.wait(UTIL_EVERY_S):
            for r in self._nvml.read():
                if r.index == self.index and r.utilization_percent is not None:
                    self.samples.append((time.time(), r.utilization_percent))

    def mean_between(self, start: float, end: float) -> float | None:
        window = [u for t, u in self.samples if start <= t <= end]
        return round(sum(window) / len(window), 1) if window else None


def steady_window(stamps: Sequence[float]) -> tuple[float, float]:
    """The throughput window of ``batch_rate``: after the first 10% of completions."""
    ts = sorted(stamps)
    return ts[int(len(ts) * WARMUP_FRAC)], ts[-1]


def util_index(device: str) -> int | None:
    return int(device.split(":")[1]) if device.startswith("cuda:") else None


class ProcCpu:
    """CPU seconds of named processes over a run (``worker-0``, ``producer-1``,
    ``redis`` ...), summed per kind: per frame, and how many CPUs the busiest
    process of each kind kept busy (1.0: a process that never waited, the limit of
    one Python process)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        self.t0 = time.perf_counter()

    def stop(self, frames: int) -> dict[str, dict[str, float]]:
        wall = time.perf_counter() - self.t0
        spent = {name: proc_cpu_s(pid) - self.start[name] for name, pid in self.pids.items()}
        per_frame: dict[str, float] = {}
        busiest: dict[str, float] = {}
        for name, sec in spent.items():
            kind = name.split("-")[0]
            per_frame[kind] = per_frame.get(kind, 0.0) + sec * 1000.0 / max(frames, 1)
            busiest[kind] = max(busiest.get(kind, 0.0), sec / wall if wall > 0 else 0.0)
        return {
            "cpu_ms_per_frame": {k: round(v, 3) for k, v in per_frame.items()},
            "busiest_cpus": {k: round(v, 2) for k, v in busiest.items()},
        }
