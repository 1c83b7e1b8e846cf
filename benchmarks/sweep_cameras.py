"""The camera axis of ``framepool bench sweep``: N synthetic cameras in open loop.

Each camera sends one frame every ``1 / fps`` seconds from a random phase of its
own (seeded): cameras are not synchronised, so the frames of many cameras arrive
in an irregular stream, unlike one camera's evenly spaced frames. The schedule
(:func:`camera_schedule`) is fixed before the run and followed whatever the
results do (:func:`drive`): the frames due together go in one
``FrameProducer.submit_many`` call, and a reader thread reads the results with
``FrameHandle.get`` in submission order, so a slow result never delays the next
frame (no coordinated omission).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from queue import SimpleQueue
from typing import Any

from benchmarks.harness import percentile, result_latencies, steady_rate
from benchmarks.sandbox import BenchError
from framepool.errors import ResultTimeout
from framepool.settings import Settings

RESULT_TIMEOUT = 120.0  # s: the last result of a point must come within this
READERS = 8  # threads reading results: each waits for one item at a time
LEAD_S = 0.05  # the schedule starts this long after drive() is called


def camera_schedule(
    cameras: int, fps: float, duration_s: float, seed: int = 0
) -> list[tuple[float, int, int]]:
    """``(t, camera, seq)`` of every frame sent in ``[0, duration_s)``, sorted by ``t``.

    Camera ``c`` sends frame ``k`` at ``phase_c + k / fps``, its phase drawn
    uniformly from ``[0, 1 / fps)`` (seeded, so repeats and runs are comparable).
    """
    if cameras < 1 or fps <= 0 or duration_s <= 0:
        raise ValueError(
            f"need cameras >= 1, fps > 0, duration > 0; got {cameras}, {fps}, {duration_s}"
        )
    period = 1.0 / fps
    rng = random.Random(seed)
    out = []
    for cam in range(cameras):
        phase = rng.uniform(0.0, period)
        k = 0
        while (t := phase + k * period) < duration_s:
            out.append((t, cam, k))
            k += 1
    out.sort()
    return out


def drive(
    times: Sequence[float],
    submit: Callable[[list[int]], list[Any]],
    get: Callable[[Any, float], Any],
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    result_timeout: float = RESULT_TIMEOUT,
    readers: int = READERS,
) -> tuple[list[tuple[int, Any, float]], float]:
    """Submit item ``i`` at ``start + times[i]`` (``times`` sorted); read every result.

    ``submit(indices)`` enqueues the items due together and returns their handles.
    ``readers`` threads read them with ``get(handle, timeout)`` (``None``: no result
    in time), so a slow result never holds up a submission (Celery's
    ``AsyncResult.get`` waits in steps of a second whatever its timeout, so it
    cannot be interleaved with the schedule), nor the reading of a later item that
    is done first (several workers or replicas finish out of order; one reader in
    submission order would count that wait in the later item's latency). Returns
    ``(index, result, submit-to-read ms)`` in submission order and the largest
    lateness of a submission (s).
    """
    n = len(times)
    handed: SimpleQueue[tuple[int, Any, float] | None] = SimpleQueue()
    done: list[tuple[int, Any, float]] = []
    failed: list[BaseException] = []

    def reader() -> None:
        while (item := handed.get()) is not None:
            index, handle, sent = item
            try:
                result = get(handle, result_timeout)
                if result is None:
                    raise BenchError(f"no result within {result_timeout:.0f}s (frame {index})")
            except BaseException as exc:  # re-raised by the caller's thread
                failed.append(exc)
                return
            done.append((index, result, (clock() - sent) * 1000.0))

    threads = [threading.Thread(target=reader, name=f"sweep-reader-{k}", daemon=True)
               for k in range(readers)]  # fmt: skip
    for thread in threads:
        thread.start()
    max_late = 0.0
    start = clock() + LEAD_S
    i = 0
    try:
        while i < n and not failed:
            now = clock()
            if now < start + times[i]:
                sleep(start + times[i] - now)
                continue
            j = i
            while j < n and now >= start + times[j]:
                j += 1
            max_late = max(max_late, now - (start + times[i]))
            for k, handle in zip(range(i, j), submit(list(range(i, j))), strict=True):
                handed.put((k, handle, now))
            i = j
    finally:
        for _ in threads:
            handed.put(None)  # each reader stops after the last handles
    for thread in threads:
        while thread.is_alive():  # join with a timeout so Ctrl-C is seen
            thread.join(0.2)
    if failed:
        raise failed[0]
    done.sort(key=lambda item: item[0])
    return done, max_late


def camera_stats(
    schedule: Sequence[tuple[float, int, int]],
    done: Sequence[tuple[int, Any, float]],
    warmup_s: float,
    max_late_s: float,
) -> dict[str, Any]:
    """Figures of one point from the frames scheduled at or after ``warmup_s``."""
    kept = [(i, r, ms) for i, r, ms in done if schedule[i][0] >= warmup_s]
    ok = [(r, ms) for _, r, ms in kept if r.ok]
    statuses = Counter(str(getattr(r.status, "value", r.status)) for _, r, _ in kept)
    if len(ok) < 2:
        raise BenchError(f"only {len(ok)} frames answered ok after warm-up ({dict(statuses)})")
    results = [r for r, _ in ok]
    client = [ms for _, ms in ok]
    return {
        "frames": len(kept),
        "statuses": dict(statuses),
        "cameras_seen": len({schedule[i][1] for i, _, _ in kept}),
        "steady_fps": round(steady_rate([r.completed_at for r in results], 0.0), 2),
        "client_p50_ms": round(percentile(client, 50), 3),
        "client_p99_ms": round(percentile(client, 99), 3),
        **result_latencies(results),
        "mean_batch_size": round(sum(r.batch_size for r in results) / len(results), 2),
        "max_submit_lateness_ms": round(max_late_s * 1000.0, 3),
    }


def camera_point(
    settings: Settings,
    model_id: str,
    jpegs: Sequence[bytes],
    cameras: int,
    fps: float,
    warmup_s: float,
    window_s: float,
    seed: int = 0,
    pids: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One run: ``cameras`` cameras at ``fps`` each for ``warmup_s + window_s`` seconds;
    CPU per frame of the ``pids`` (name -> pid), this process and everything else."""
    from benchmarks.pipeline import CpuMeter
    from producer import FrameProducer

    schedule = camera_schedule(cameras, fps, warmup_s + window_s, seed)
    producer = FrameProducer(settings)
    k = len(jpegs)

    def submit(indices: list[int]) -> list[Any]:
        items = []
        for i in indices:
            _, cam, seq = schedule[i]
            items.append(
                {
                    "model_id": model_id,
                    "frame": jpegs[i % k],
                    "camera_id": f"cam-{cam:03d}",
                    "seq": seq,
                }
            )
        return producer.submit_many(items)

    def get(handle: Any, timeout: float) -> Any:
        try:
            return handle.get(timeout=timeout)
        except ResultTimeout:
            return None

    meter = CpuMeter(dict(pids or {}))
    try:
        done, late = drive([t for t, _, _ in schedule], submit, get)
    finally:
        producer.close()
    cpu = meter.per_frame_ms(max(1, len(done)))
    return {**camera_stats(schedule, done, warmup_s, late), "others_cpus": cpu["others_cpus"],
            "cpu_ms_per_frame": cpu}  # fmt: skip
