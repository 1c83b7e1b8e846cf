"""The producer side of ``framepool bench pipeline``, shared by the other benchmarks.

:class:`FramepoolClient` (``FrameProducer.submit_many`` / ``FrameHandle.get``) and
:class:`PlainClient` (the plain Celery baseline: ``apply_async`` / ``get`` per
frame) drive a closed loop (queue kept fed) or an open loop (a fixed schedule);
:class:`CpuMeter` takes the CPU seconds of the worker, Redis and this process
over a run, and :class:`Run` holds one repeat's figures.
"""

from __future__ import annotations

import resource
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import closed_loop as _closed_loop
from benchmarks.harness import machine_busy_s as _machine_busy
from benchmarks.harness import median, percentile, steady_rate
from benchmarks.harness import proc_cpu_s as _proc_cpu
from benchmarks.sandbox import BenchError
from framepool.errors import ResultTimeout
from framepool.settings import Settings

WARMUP_FRAC = 0.1
RESULT_TIMEOUT = 120.0


# ------------------------------------------------------------------ CPU time
def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class CpuMeter:
    """CPU seconds spent by the worker, Redis and this (producer) process over a run,
    and by everything else on the machine (other processes: noise)."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0

    def __post_init__(self) -> None:
        self.start = self._now()
        self.t0 = time.perf_counter()

    def _now(self) -> dict[str, float]:
        now = {name: _proc_cpu(pid) for name, pid in self.pids.items()}
        now["producer"] = _self_cpu()
        now["machine"] = _machine_busy()
        return now

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        end = self._now()
        wall = time.perf_counter() - self.t0
        spent = {k: end[k] - self.start[k] for k in end}
        others = spent.pop("machine") - sum(spent.values())
        out = {k: round(v * 1000.0 / frames, 3) for k, v in spent.items()}
        # CPUs' worth of work done by other processes meanwhile (0.5 = half a core)
        out["others_cpus"] = round(max(0.0, others) / wall, 2) if wall > 0 else 0.0
        return out


def _latency(n: int, fps: float, late: float, added: Sequence[float],
             e2e: Sequence[float]) -> dict[str, Any]:  # fmt: skip
    """An open-loop run's figures: the schedule kept, added and round-trip percentiles."""
    return {
        "frames": n,
        "fps": fps,
        "max_submit_lateness_ms": round(late * 1000.0, 3),
        "added_p50_ms": round(percentile(added, 50), 3),
        "added_p99_ms": round(percentile(added, 99), 3),
        "e2e_p50_ms": round(percentile(e2e, 50), 3),
        "e2e_p99_ms": round(percentile(e2e, 99), 3),
    }


# ------------------------------------------------------------------ one run
@dataclass
class Run:
    """One repeat of one measurement."""

    frames: int
    steady_fps: float
    wall_fps: float
    cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "steady_fps": round(self.steady_fps, 2),
            "wall_fps": round(self.wall_fps, 2),
            "cpu_ms_per_frame": self.cpu_ms_per_frame,
            **self.extra,
        }


class FramepoolClient:
    """The producer side of framepool for one model."""

    def __init__(self, settings: Settings, model_id: str, jpegs: Sequence[bytes]) -> None:
        from producer import FrameProducer

        self.producer = FrameProducer(settings)
        self.model_id = model_id
        self.jpegs = jpegs
        self.camera = f"bench-{model_id}"

    def close(self) -> None:
        self.producer.close()

    def _items(self, start: int, count: int) -> list[dict[str, Any]]:
        k = len(self.jpegs)
        return [
            {
                "model_id": self.model_id,
                "frame": self.jpegs[i % k],
                "camera_id": self.camera,
                "seq": i,
            }
            for i in range(start, start + count)
        ]

    def submit(self, start: int, count: int) -> list[Any]:
        return self.producer.submit_many(self._items(start, count))

    @staticmethod
    def read(handle: Any) -> Any:
        result = handle.get(timeout=RESULT_TIMEOUT)
        if not result.ok:
            raise BenchError(f"frame {handle.seq} failed: {result.status} {result.error}")
        return result

    def closed_loop(self, n: int, meter: CpuMeter) -> Run:
        results, wall = _closed_loop(n, self.submit, self.read)
        cpu = meter.per_frame_ms(n)
        sizes = [r.batch_size for r in results]
        timings = {
            k: round(median(getattr(r.timings_ms, k) for r in results), 3)
            for k in ("queue", "batch_wait", "decode", "preprocess", "inference", "postprocess")
        }
        return Run(
            frames=n,
            steady_fps=steady_rate([r.completed_at for r in results], WARMUP_FRAC),
            wall_fps=n / wall,
            cpu_ms_per_frame=cpu,
            extra={
                "mean_batch_size": round(sum(sizes) / len(sizes), 2),
                "median_timings_ms": timings,
            },
        )

    def open_loop(self, n: int, fps: float) -> dict[str, Any]:
        """One frame every 1/fps s on a fixed schedule (see :func:`_open_loop`)."""

        def submit(i: int) -> Any:
            frame = self.jpegs[i % len(self.jpegs)]
            return self.producer.submit(self.model_id, frame, camera_id=self.camera, seq=i)

        def get(handle: Any, timeout: float) -> Any:
            try:
                result = handle.get(timeout=timeout)
            except ResultTimeout:
                return None
            if not result.ok:
                raise BenchError(f"frame {handle.seq} failed: {result.status} {result.error}")
            return result

        done, late = _open_loop(n, fps, submit, get)
        results = [r for r, _ in done]
        added = [
            (r.completed_at - r.enqueued_at) * 1000.0 - r.timings_ms.inference for r in results
        ]
        e2e = [ms for _, ms in done]
        parts = ("queue", "decode", "preprocess", "batch_wait", "postprocess")
        return {
            **_latency(n, fps, late, added, e2e),
            "inference_p50_ms": round(percentile([r.timings_ms.inference for r in results], 50), 3),
            "mean_batch_size": round(sum(r.batch_size for r in results) / len(results), 2),
            "median_parts_ms": {
                k: round(median(getattr(r.timings_ms, k) for r in results), 3) for k in parts
            },
        }


def _open_loop(
    n: int,
    fps: float,
    submit: Callable[[int], Any],
    get: Callable[[Any, float], Any],
) -> tuple[list[tuple[Any, float]], float]:
    """Submit frame ``i`` at ``start + i/fps`` whatever the results do.

    Between submissions the oldest outstanding result is read with ``get(handle,
    timeout)`` (``None`` on timeout), its timeout cut at the next frame's due
    time, so a slow result never delays the schedule (no coordinated omission).
    Returns ``(result, submit-to-read ms)`` in submission order and the largest
    lateness of a submission (s).
    """
    period = 1.0 / fps
    pending: deque[tuple[Any, float]] = deque()
    done: list[tuple[Any, float]] = []
    max_late = 0.0
    start = time.perf_counter() + period
    i = 0
    deadline = 0.0
    while i < n or pending:
        now = time.perf_counter()
        due = start + i * period
        if i < n and now >= due:
            max_late = max(max_late, now - due)
            pending.append((submit(i), now))
            i += 1
            continue
        if not pending:
            time.sleep(due - now)
            continue
        handle, sent = pending[0]
        if i >= n and not deadline:
            deadline = now + RESULT_TIMEOUT
        timeout = due - now if i < n else deadline - now
        result = get(handle, max(timeout, 0.0005))
        if result is None:
            if i >= n and time.perf_counter() >= deadline:
                raise BenchError(f"no result within {RESULT_TIMEOUT:.0f}s")
            continue  # time to submit the next frame
        done.append((result, (time.perf_counter() - sent) * 1000.0))
        pending.popleft()
        deadline = 0.0
    return done, max_late


def plain_value(handle: Any, timeout: float) -> dict[str, Any] | None:
    """A plain Celery task's result dict; None when it is not there within ``timeout`` s."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    try:
        value = handle.get(timeout=timeout)
    except CeleryTimeout:
        return None
    if not isinstance(value, dict):
        raise BenchError(f"plain task failed: {value!r}")
    return value


class PlainClient:
    """The hand-rolled baseline's producer: ``apply_async`` per frame, ``get`` per result."""

    def __init__(self, redis_url: str, jpegs: Sequence[bytes], queue: str) -> None:
        from benchmarks.plain_celery import TASK, make_app

        self.app = make_app(redis_url)
        self.task = self.app.tasks[TASK]
        self.jpegs = jpegs
        self.queue = queue

    def close(self) -> None:
        self.app.close()

    def submit(self, start: int, count: int) -> list[Any]:
        k = len(self.jpegs)
        return [
            self.task.apply_async((self.jpegs[i % k], time.time()), queue=self.queue)
            for i in range(start, start + count)
        ]

    @staticmethod
    def read(handle: Any) -> dict[str, Any]:
        value = handle.get(timeout=RESULT_TIMEOUT)
        if not isinstance(value, dict):
            raise BenchError(f"plain task failed: {value!r}")
        return value

    def closed_loop(self, n: int, meter: CpuMeter) -> Run:
        results, wall = _closed_loop(n, self.submit, self.read)
        return Run(
            frames=n,
            steady_fps=steady_rate([r["completed_at"] for r in results], WARMUP_FRAC),
            wall_fps=n / wall,
            cpu_ms_per_frame=meter.per_frame_ms(n),
        )

    def open_loop(self, n: int, fps: float) -> dict[str, Any]:
        """The same schedule as framepool's (c); latency = completed_at - enqueued_at."""

        def submit(i: int) -> Any:
            return self.submit(i, 1)[0]

        done, late = _open_loop(n, fps, submit, plain_value)
        added = [(r["completed_at"] - r["enqueued_at"]) * 1000.0 for r, _ in done]
        e2e = [ms for _, ms in done]
        return _latency(n, fps, late, added, e2e)


def _warm(closed: Any, frames: int) -> None:
    _closed_loop(frames, closed.submit, closed.read)
