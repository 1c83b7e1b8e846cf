"""Per-model counters and stage-timing histograms of one worker (pure logic).

The runner records each batch here; the heartbeat publishes :meth:`snapshot`
so the monitor can turn it into Prometheus histograms. Buckets are cumulative
counts in Prometheus' style (``le`` upper bounds in milliseconds).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

#: Stage names in ``timings_ms`` and in the per-model histograms.
STAGES = (
    "queue",
    "batch_wait",
    "decode",
    "preprocess",
    "host_to_device",
    "inference",
    "postprocess",
    "total",
)

#: Upper bounds (ms) shared by every stage histogram: 0.1 ms to 10 s.
BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
)  # fmt: skip

#: Upper bounds (bytes) of the frame-size histogram: 4 KB to 16 MB.
FRAME_SIZE_BUCKETS: tuple[int, ...] = tuple(4096 * 2**i for i in range(13))

#: Upper bounds of the batch-size histogram (frames per batch).
BATCH_SIZE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Fixed buckets, a sum and a count (not thread-safe; ModelStats locks)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n  # the first bound >= value
        self.sum += value * n
        self.count += n

    def snapshot(self) -> dict[str, Any]:
        cumulative, total = [], 0
        for c in self.counts:
            total += c
            cumulative.append(total)
        return {
            "buckets": [[b, c] for b, c in zip(self.bounds, cumulative, strict=False)],
            "sum": round(self.sum, 3),
            "count": self.count,
        }


class ModelStats:
    """Counters of one model in one worker: frames, errors, expired, batches, timings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames = 0  # frames that reached a result (any status)
        self.ok = 0
        self.errors = 0
        self.expired = 0
        self.batches = 0
        self.oom_splits = 0
        self.batch_sizes: dict[int, int] = {}
        self.batch_size_hist = Histogram(BATCH_SIZE_BUCKETS)
        self.frame_size_hist = Histogram(FRAME_SIZE_BUCKETS)
        self.stages = {s: Histogram(BUCKETS_MS) for s in STAGES}

    def record_batch(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
            self.batch_size_hist.observe(size)

    def record_results(self, results: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            for r in results:
                self.frames += 1
                status = r.get("status")
                if status == "ok":
                    self.ok += 1
                elif status == "expired":
                    self.expired += 1
                else:
                    self.errors += 1
                for stage, ms in (r.get("timings_ms") or {}).items():
                    h = self.stages.get(stage)
                    if h is not None and isinstance(ms, int | float):
                        h.observe(float(ms))

    def record_frame_size(self, size_bytes: int) -> None:
        with self._lock:
            self.frame_size_hist.observe(size_bytes)

    def record_oom_split(self) -> None:
        with self._lock:
            self.oom_splits += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "frames": self.frames,
                "ok": self.ok,
                "errors": self.errors,
                "expired": self.expired,
                "batches": self.batches,
                "oom_splits": self.oom_splits,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "batch_size_hist": self.batch_size_hist.snapshot(),
                "frame_size_bytes": self.frame_size_hist.snapshot(),
                "timings_ms": {s: h.snapshot() for s, h in self.stages.items() if h.count},
            }
