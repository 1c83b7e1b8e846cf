"""The pure parts of ``framepool bench peers``: the open-loop schedule, throughput
from batched completion stamps, latency percentiles, the order of the repeats and
the CPU split. No I/O, no clock: unit-tested on their own."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.harness import median, percentile
from benchmarks.peers_clients import Reply
from benchmarks.sandbox import BenchError
from benchmarks.sweep_cameras import camera_schedule

BATCH = 8  # the batch cap of every system
WARMUP_FRAC = 0.1
SCHEDULE_SEED = 7


def open_schedule(
    frames: int, fps: float, cameras: int, seed: int = SCHEDULE_SEED
) -> list[tuple[float, int, int]]:
    """The first ``frames`` sends ``(t, camera, seq)`` of ``cameras`` cameras at
    ``fps / cameras`` each (``fps`` in all), each camera from a seeded random phase."""
    if frames < 1:
        raise ValueError(f"need frames >= 1, got {frames}")
    duration = (frames + cameras) / fps
    sched = camera_schedule(cameras, fps / cameras, duration, seed)
    if len(sched) < frames:  # cannot happen with the margin above; say so if it does
        raise BenchError(f"schedule has {len(sched)} frames, wanted {frames}")
    return sched[:frames]


def batch_rate(stamps: Sequence[float], warmup_frac: float = WARMUP_FRAC) -> float:
    """Completions per second after the first ``warmup_frac`` of them, for stamps that
    come in batches (every frame of a batch shares its batch's stamp).

    The window starts at the first kept stamp and counts only the frames completed
    after it: ``harness.steady_rate``'s ``(n - 1) / span`` would count that first
    batch's other frames too, 1.3x too high over 4 batches, 2% over 50.
    """
    ts = sorted(stamps)
    if not 0 <= warmup_frac < 1:
        raise ValueError(f"warmup_frac must be within [0, 1), got {warmup_frac}")
    window = ts[math.ceil(len(ts) * warmup_frac) :]
    if not window:
        raise ValueError("no completions after warm-up")
    later = [t for t in window if t > window[0]]
    if not later:
        raise ValueError("completions after warm-up all share one timestamp")
    return len(later) / (later[-1] - window[0])


def closed_stats(replies: Sequence[Reply], wall: float) -> dict[str, Any]:
    """Throughput of one closed-loop run from the servers' completion stamps."""
    return {
        "frames": len(replies),
        "steady_fps": round(batch_rate([r.completed_at for r in replies]), 2),
        "wall_fps": round(len(replies) / wall, 2) if wall > 0 else float("nan"),
        "mean_batch_size": round(sum(r.batch_size for r in replies) / len(replies), 2),
    }


def merged_spans(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """``spans`` sorted, with the ones that overlap or touch joined."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def model_idle_ms(done: Sequence[tuple[int, Reply, float]]) -> list[float]:
    """Per frame, the part of its send-to-reply time during which no forward pass ran.

    A frame that arrives while the model runs an earlier batch waits for it with
    any server, the direct call included: that wait is the model's, not the
    serving's. What is left (moving the frame, decoding it while the model is
    idle, waiting for a batch to fill, writing and reading the result) is what
    the system adds. The forward passes are those of the replies' own batches
    (``Reply.forward_span``, server clock), set against each frame's send
    (``Reply.sent_at``, client clock: the same host) and reply."""
    busy = merged_spans({r.forward_span for _, r, _ in done})
    out = []
    for _, r, ms in done:
        if r.sent_at is None:
            raise BenchError("a reply without its send time (sent_at)")
        a, b = r.sent_at, r.sent_at + ms / 1000.0
        covered = sum(max(0.0, min(b, e) - max(a, s)) for s, e in busy if s < b and e > a)
        out.append(max(0.0, ms - covered * 1000.0))
    return out


def open_stats(done: Sequence[tuple[int, Reply, float]], late_s: float) -> dict[str, Any]:
    """Latency of one open-loop run: send to reply on the client (*e2e*), that less
    the forward pass of the frame's batch (*overhead*), that less every forward pass
    it waited for (*model idle*, :func:`model_idle_ms`; when the replies carry their
    send times), framepool's *added* latency from its worker's stamps."""
    if len(done) < 2:
        raise BenchError(f"only {len(done)} replies in an open-loop run")
    e2e = [ms for _, _, ms in done]
    over = [ms - r.inference_ms for _, r, ms in done]
    out: dict[str, Any] = {"frames": len(done)}
    series = [("e2e", e2e), ("overhead", over)]
    if all(r.sent_at is not None for _, r, _ in done):
        series.append(("model_idle", model_idle_ms(done)))
    for name, values in series:
        out[f"{name}_p50_ms"] = round(percentile(values, 50), 3)
        out[f"{name}_p99_ms"] = round(percentile(values, 99), 3)
    forward = [r.inference_ms for _, r, _ in done]
    out["inference_p50_ms"] = round(median(forward), 3)
    out["inference_p99_ms"] = round(percentile(forward, 99), 3)
    out["mean_batch_size"] = round(sum(r.batch_size for _, r, _ in done) / len(done), 2)
    added = [r.added_ms for _, r, _ in done if r.added_ms is not None]
    if added:
        out["added_p50_ms"] = round(percentile(added, 50), 3)
        out["added_p99_ms"] = round(percentile(added, 99), 3)
    out["max_send_lateness_ms"] = round(late_s * 1000.0, 3)
    return out


def loop_frames(frames: int, batch: int = BATCH) -> int:
    """The tight loop is steady from its first batch: half the frames are enough."""
    return max(8 * batch, frames // 2)


def rotate(names: Sequence[str], r: int) -> list[str]:
    """Repeat ``r``'s order: rotated so that no system always runs first."""
    if not names:
        return []
    k = r % len(names)
    return list(names[k:]) + list(names[:k])


def cpu_split(cpu: dict[str, float]) -> dict[str, float]:
    """CpuMeter's per-process figures folded into server / client / others."""
    server = sum(v for k, v in cpu.items() if k.startswith("srv:"))
    clients = sum(v for k, v in cpu.items() if k.startswith("cli:"))  # client processes
    return {
        "server": round(server, 3),
        "client": round(cpu.get("producer", 0.0) + clients, 3),
        "others_cpus": cpu.get("others_cpus", 0.0),
    }
