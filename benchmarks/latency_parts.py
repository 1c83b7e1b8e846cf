"""Where a frame's time goes in framepool's open loop, hop by hop.

``python -m benchmarks.latency_parts [--workers 2] [--fps 12] [--frames 300]``
starts a private Redis and ``--workers`` resnet18 workers (the cores shared out,
as ``bench peers --replicas``), sends ``--frames`` frames from 4 cameras at
``--fps`` on a seeded schedule (:func:`benchmarks.peers_stats.open_schedule`) and
reads the results as they come (``sweep_cameras.drive``'s reader threads).

Each frame's send-to-read time is cut into its hops (:func:`hops`) from the
result's own stamps and the client's (one host, one clock):

- ``send``: the producer's call until its ``enqueued_at``;
- ``queue``: Redis, Celery's consumer and the pool until the intake starts;
- ``decode`` and ``preprocess``: in the worker's pool thread;
- ``handoff``: what is left until the forward pass, less ``batch_wait``: the
  runner's queue and the batch's collate (and the intake's checks);
- ``batch_wait``: in the runner's queue until its batch was formed;
- ``forward``: host-to-device and the forward pass;
- ``post``: the model's postprocess;
- ``back``: the result's write (SET + PUBLISH), the producer's listener and the
  reader thread.

For each hop it gives p50 / p99, and the part of it during which no worker ran a
forward pass (*idle*, as ``peers_stats.model_idle_ms``); then the same for the
frames whose model-idle time is at or over its p95: what the tail is made of. And
the quiet before each frame (*gap*: ms since the frame sent just before it, from
any camera): how long it was for the tail's frames, against all frames, and how
many of the tail's had no frame sent in the :data:`QUIET_MS` before them.
"""

from __future__ import annotations

import argparse
import json
import time
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.balance import forward_span, open_loop_args
from benchmarks.harness import percentile, test_frames
from benchmarks.peers_stats import merged_spans, open_schedule
from benchmarks.sandbox import run_measure
from framepool.schemas import InferenceResult
from framepool.settings import Settings

MODEL = "resnet18"
HOPS = ("send", "queue", "decode", "preprocess", "handoff", "batch_wait", "forward",
        "post", "back")  # fmt: skip
TAIL_Q = 95  # the tail: frames whose model-idle time is at or over this percentile
QUIET_MS = 20.0  # a frame with no other sent this long before it came after a quiet gap


def hops(r: InferenceResult, sent: float, read: float) -> list[tuple[str, float, float]]:
    """``(hop, start, end)`` of one frame (wall clock, s), in order, back to back
    from ``sent`` to ``read``."""
    t = r.timings_ms
    enq = r.enqueued_at or sent
    intake = enq + t.queue / 1000.0
    decoded = intake + t.decode / 1000.0
    prepped = decoded + t.preprocess / 1000.0
    f0, f1 = forward_span(r)
    f0 -= t.host_to_device / 1000.0
    formed = max(prepped, f0 - t.batch_wait / 1000.0)
    bounds = [sent, enq, intake, decoded, prepped, formed, f0, f1, r.completed_at or f1, read]
    # stamps come from two processes' clocks and rounding: keep the hops in order
    for i in range(1, len(bounds)):
        bounds[i] = max(bounds[i], bounds[i - 1])
    return [(name, bounds[i], bounds[i + 1]) for i, name in enumerate(HOPS)]


def idle_part(a: float, b: float, busy: Sequence[tuple[float, float]]) -> float:
    """Seconds of ``[a, b]`` outside every span of ``busy`` (merged, sorted)."""
    covered = sum(max(0.0, min(b, e) - max(a, s)) for s, e in busy if s < b and e > a)
    return max(0.0, (b - a) - covered)


def parts(frames: Sequence[tuple[InferenceResult, float, float]]) -> list[dict[str, float]]:
    """Per frame ``(result, sent, read)``: each hop's ms, and ``<hop>_idle`` ms of it
    while no worker ran a forward pass; ``total`` and ``idle`` over all hops; ``gap``,
    ms since the frame sent before it (none for the first frame sent)."""
    busy = merged_spans({forward_span(r) for r, _, _ in frames})
    sends = sorted(sent for _, sent, _ in frames)
    out = []
    for r, sent, read in frames:
        row: dict[str, float] = {}
        i = bisect_left(sends, sent)
        if i > 0:
            row["gap"] = (sent - sends[i - 1]) * 1000.0
        for name, a, b in hops(r, sent, read):
            row[name] = (b - a) * 1000.0
            row[f"{name}_idle"] = idle_part(a, b, busy) * 1000.0
        row["total"] = (read - sent) * 1000.0
        row["idle"] = sum(row[f"{h}_idle"] for h in HOPS)
        out.append(row)
    return out


def summary(rows: Sequence[dict[str, float]], tail_q: float = TAIL_Q) -> dict[str, Any]:
    """p50 / p99 of every hop, and its mean in the frames of the model-idle tail."""
    if not rows:
        raise ValueError("no frames")
    cut = percentile([r["idle"] for r in rows], tail_q)
    tail = [r for r in rows if r["idle"] >= cut]
    out: dict[str, Any] = {"frames": len(rows), "tail_frames": len(tail), "tail_cut_ms": cut}
    gaps = [r["gap"] for r in rows if "gap" in r]
    tail_gaps = [r["gap"] for r in tail if "gap" in r]
    if gaps and tail_gaps:
        out["gap"] = {
            "p50": round(percentile(gaps, 50), 3),
            "tail_p50": round(percentile(tail_gaps, 50), 3),
            "tail_min": round(min(tail_gaps), 3),
            "tail_quiet": sum(g >= QUIET_MS for g in tail_gaps),
            "tail_with_gap": len(tail_gaps),
        }
    for key in (*HOPS, "total"):
        for suffix in ("", "_idle"):
            k = f"{key}{suffix}" if key != "total" or not suffix else "idle"
            vals = [r[k] for r in rows]
            out[k] = {
                "p50": round(percentile(vals, 50), 3),
                "p99": round(percentile(vals, 99), 3),
                "tail_mean": round(sum(r[k] for r in tail) / len(tail), 3),
            }
    return out


def print_summary(s: dict[str, Any]) -> None:
    print(f"{s['frames']} frames; tail: {s['tail_frames']} frames with model idle >= "
          f"{s['tail_cut_ms']:.1f} ms (p{TAIL_Q})")  # fmt: skip
    print(f"{'hop':12s} {'p50':>7s} {'p99':>7s} {'tail':>7s} | {'idle p50':>8s} "
          f"{'idle p99':>8s} {'tail':>7s}")  # fmt: skip
    for key in (*HOPS, "total"):
        a, b = s[key], s["idle" if key == "total" else f"{key}_idle"]
        print(f"{key:12s} {a['p50']:7.2f} {a['p99']:7.2f} {a['tail_mean']:7.2f} | "
              f"{b['p50']:8.2f} {b['p99']:8.2f} {b['tail_mean']:7.2f}")  # fmt: skip
    g = s.get("gap")
    if g:
        print(f"gap before a frame (ms since the one sent before it): p50 {g['p50']:.1f}; "
              f"tail p50 {g['tail_p50']:.1f}, min {g['tail_min']:.1f}; tail frames with none "
              f"sent in the {QUIET_MS:.0f} ms before: {g['tail_quiet']} of {g['tail_with_gap']}")  # fmt: skip


def measure(sb: Any, workers: int, fps: float, frames: int, out: Path | None) -> dict[str, Any]:
    from benchmarks.pipeline import start_framepool_workers
    from benchmarks.sweep_cameras import drive
    from producer import FrameProducer
    from workers.placement import host_cpus

    settings = Settings(redis_url=sb.redis_url, max_batch_size=8)
    names = [f"w{i}" for i in range(workers)]
    start_framepool_workers(sb, MODEL, max(1, host_cpus() // workers), "cpu", names)
    jpegs = test_frames(16, quality=90)
    sched = open_schedule(frames, fps, 4)
    sent: dict[int, float] = {}
    with FrameProducer(settings) as p:
        for h in p.submit_many([{"model_id": MODEL, "frame": jpegs[i % 16]} for i in range(32)]):
            h.get(timeout=60)

        def submit(indices: list[int]) -> list[Any]:
            now = time.time()
            for i in indices:
                sent[i] = now
            return p.submit_many([{"model_id": MODEL, "frame": jpegs[i % 16],
                                   "camera_id": f"cam-{sched[i][1]}"} for i in indices])  # fmt: skip

        def get(handle: Any, timeout: float) -> tuple[InferenceResult, float]:
            return handle.get(timeout=timeout), time.time()

        done, _late = drive([t for t, _, _ in sched], submit, get)
    frames_ = [(r, sent[i], read) for i, (r, read), _ in done if r.ok]
    s = summary(parts(frames_))
    print_summary(s)
    if out is not None:
        out.write_text(json.dumps({"workers": workers, "fps": fps, **s}, indent=1) + "\n")
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    def out_arg(ap: argparse.ArgumentParser) -> object:
        return ap.add_argument("--out", type=Path, help="also write the figures as JSON")

    args = open_loop_args(__doc__, argv, out_arg)
    res = run_measure(lambda sb: measure(sb, args.workers, args.fps, args.frames, args.out))
    return res if isinstance(res, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
