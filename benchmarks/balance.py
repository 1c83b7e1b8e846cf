"""Do frames wait for a busy worker while another worker's model is idle?

``python -m benchmarks.balance [--workers 2] [--fps 12] [--frames 300]`` starts a
private Redis and ``--workers`` resnet18 workers (the cores shared out, one torch
thread each on 2 cores, as ``bench peers --replicas``), sends ``--frames`` frames
from 4 cameras at ``--fps`` on a seeded schedule, and reads every result. For each
frame it takes the wait from *decoded* (enqueued + queue + decode + preprocess) to
the start of its forward pass, and the part of that wait during which no other
worker's model ran a forward pass (:func:`idle_waits`): the time a frame lost
by going to a busy worker. Prints percentiles and the frames per worker.
docs/benchmarks.md quotes its run of 2026-11-23 (the 22:02 verdict of ``bench peers``).
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.harness import percentile, test_frames
from benchmarks.peers_stats import open_schedule
from benchmarks.pipeline import start_framepool_workers
from benchmarks.sandbox import run_measure
from framepool.schemas import InferenceResult
from framepool.settings import Settings
from workers.placement import host_cpus

MODEL = "resnet18"


def forward_span(r: InferenceResult) -> tuple[float, float]:
    """When the frame's forward pass ran (the worker's clock, s)."""
    end = (r.completed_at or 0.0) - r.timings_ms.postprocess / 1000.0
    return end - r.timings_ms.inference / 1000.0, end


def idle_waits(results: Sequence[InferenceResult]) -> list[tuple[float, float]]:
    """Per frame: (ms from decoded to its forward pass, ms of that while no other
    worker's model ran a forward pass)."""
    spans: dict[str | None, list[tuple[float, float]]] = collections.defaultdict(list)
    for r in results:
        spans[r.worker].append(forward_span(r))
    out = []
    for r in results:
        t = r.timings_ms
        ready = (r.enqueued_at or 0.0) + (
            (t.queue or 0) + (t.decode or 0) + (t.preprocess or 0)
        ) / 1000
        start = forward_span(r)[0]
        wait = max(0.0, start - ready)
        busy = sum(
            max(0.0, min(start, e) - max(ready, b))
            for w, ss in spans.items() if w != r.worker for b, e in ss
        )  # fmt: skip
        others = len(spans) > 1
        out.append((wait * 1000.0, max(0.0, wait - busy) * 1000.0 if others else 0.0))
    return out


def measure(sb: Any, workers: int, fps: float, frames: int) -> dict[str, Any]:
    settings = Settings(redis_url=sb.redis_url, max_batch_size=8)
    names = [f"w{i}" for i in range(workers)]
    start_framepool_workers(sb, MODEL, max(1, host_cpus() // workers), "cpu", names)
    from producer import FrameProducer

    jpegs = test_frames(16, quality=90)
    sched = open_schedule(frames, fps, 4)
    with FrameProducer(settings) as p:
        warm = p.submit_many([{"model_id": MODEL, "frame": jpegs[i % 16]} for i in range(32)])
        for h in warm:
            h.get(timeout=60)
        t0, handles = time.time() + 0.5, []
        for i, (t, cam, _) in enumerate(sched):
            time.sleep(max(0.0, t0 + t - time.time()))
            handles.append(p.submit(model_id=MODEL, frame=jpegs[i % 16], camera_id=f"cam-{cam}"))
        results = [h.get(timeout=60) for h in handles]
    waits = idle_waits(results)
    for k, name in enumerate(("wait for its own model", "... while another model idled")):
        vals = [w[k] for w in waits]
        print(f"{name:32s} ms: p50 {percentile(vals, 50):6.1f}  p90 {percentile(vals, 90):6.1f}  "
              f"p99 {percentile(vals, 99):6.1f}")  # fmt: skip
    print("frames per worker:", dict(collections.Counter(r.worker for r in results)))
    print("frames that waited > 10 ms while another model idled:",
          sum(1 for _, idle in waits if idle > 10), "of", len(waits))  # fmt: skip
    return {}


def open_loop_args(
    doc: str | None,
    argv: Sequence[str] | None,
    extra: Callable[[argparse.ArgumentParser], object] = lambda ap: None,
) -> argparse.Namespace:
    """``--workers``, ``--fps`` and ``--frames`` (and what ``extra`` adds) of the
    open-loop checks; out-of-range values are a usage error."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fps", type=float, default=12.0)
    ap.add_argument("--frames", type=int, default=300)
    extra(ap)
    args = ap.parse_args(argv)
    if args.workers < 1 or args.fps <= 0 or args.frames < 2:
        ap.error("--workers >= 1, --fps > 0 and --frames >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = open_loop_args(__doc__, argv)
    res = run_measure(lambda sb: measure(sb, args.workers, args.fps, args.frames))
    return res if isinstance(res, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
