"""``framepool bench sweep``: where the cost grows (issue #7, item 3).

Five axes, each run against a private Redis and real ``framepool worker``
processes started by the benchmark's sandbox (:mod:`benchmarks.harness`):

- ``cameras``: 1 ... 256 synthetic cameras in open loop (:mod:`benchmarks.sweep_cameras`);
- ``frame_size``: 320x240 ... 1920x1080 JPEGs, closed loop, ``resnet18``;
- ``workers``: 1, 2, 4 worker processes per device (``benchmarks.scale.measure``);
- ``batch_cap``: ``MAX_BATCH_SIZE`` 1 ... 16, closed loop, ``resnet18``;
- ``redis_memory``: bytes Redis holds per queued frame (no worker running).

The report (tables, plots, docs/benchmarks.md) is :mod:`benchmarks.sweep_report`.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    machine_info,
    median,
    result_latencies,
    steady_rate,
    test_frames,
    utc_minute,
)
from benchmarks.pipeline import CpuMeter, FramepoolClient, latency_model
from benchmarks.sandbox import Child, Sandbox, quiet_logs, run_sandboxed
from benchmarks.scale import closed_loop, start_workers
from benchmarks.sweep_cameras import camera_point
from benchmarks.sweep_memory import redis_memory
from framepool.settings import Settings

AXES = ("cameras", "frame_size", "workers", "batch_cap", "redis_memory")
SIZES = ((320, 240), (640, 480), (1280, 720), (1920, 1080))
CLOSED_MODEL = "resnet18"  # frame size, workers and batch cap
BATCH = 8  # MAX_BATCH_SIZE where the axis is not the batch cap
WINDOW = 32  # closed loop: 32-64 frames outstanding
WARMUP_FRAC = 0.1  # closed loop: completions dropped before the steady rate
DISTINCT = 8  # distinct frames per size, cycled
LOAD = 0.5  # cameras: total offered load, as a fraction of the capacity measured


@dataclass(frozen=True)
class Plan:
    """Every point and window of one run (``--quick`` is a smaller one)."""

    cameras: tuple[int, ...] = (1, 4, 16, 64, 256)
    sizes: tuple[tuple[int, int], ...] = SIZES
    workers: tuple[int, ...] = (1, 2, 4)
    batch_caps: tuple[int, ...] = (1, 2, 4, 8, 16)
    repeats: int = 2
    warmup_s: float = 3.0  # cameras: seconds sent before the measured window
    window_s: float = 12.0  # cameras: measured seconds per run
    closed_frames: int = 160  # frames per closed-loop run
    capacity_frames: int = 300  # cameras: the closed-loop capacity run
    memory_frames: int = 100  # redis_memory: frames queued per size
    load: float = LOAD
    camera_fps: float | None = None  # a fixed per-camera rate instead of ``load``


QUICK = Plan(
    cameras=(1, 16, 256),
    workers=(1, 2),
    batch_caps=(1, 8),
    repeats=1,
    warmup_s=1.0,
    window_s=4.0,
    closed_frames=64,
    capacity_frames=128,
    memory_frames=16,
)


def make_plan(
    quick: bool,
    repeats: int | None = None,
    load: float | None = None,
    camera_fps: float | None = None,
) -> Plan:
    base = QUICK if quick else Plan()
    changes: dict[str, Any] = {}
    if repeats is not None:
        changes["repeats"] = repeats
    if load is not None:
        if not 0 < load <= 2:
            raise ValueError(f"load must be within (0, 2], got {load}")
        changes["load"] = load
    if camera_fps is not None:
        if camera_fps <= 0:
            raise ValueError(f"camera fps must be > 0, got {camera_fps}")
        changes["camera_fps"] = camera_fps
    return Plan(**{**asdict(base), **changes})


def per_camera_fps(plan: Plan, cameras: int, capacity_fps: float) -> float:
    """Each camera's rate: ``--camera-fps``, else ``load * capacity`` shared by all."""
    if plan.camera_fps is not None:
        return plan.camera_fps
    return plan.load * capacity_fps / cameras


def _log(msg: str) -> None:
    print(f"[bench sweep {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _settings(sb: Sandbox, batch: int = BATCH) -> Settings:
    return Settings(redis_url=sb.redis_url, max_batch_size=batch)


def _pids(sb: Sandbox, children: list[Child]) -> dict[str, int]:
    """The processes whose CPU a run counts: the worker(s) and redis-server."""
    pids = {"redis": sb.redis.proc.pid}
    pids.update({("worker" if len(children) == 1 else c.name): c.pid for c in children})
    return pids


def closed_run(client: FramepoolClient, frames: int, pids: dict[str, int]) -> dict[str, Any]:
    """One closed-loop run of ``frames`` frames (32-64 outstanding) and its figures."""
    meter = CpuMeter(pids)
    results = closed_loop(client, frames, WINDOW)
    cpu = meter.per_frame_ms(frames)
    return {**closed_stats(results), "others_cpus": cpu["others_cpus"], "cpu_ms_per_frame": cpu}


def closed_stats(results: list[Any]) -> dict[str, Any]:
    """One closed-loop run: steady frames/s, latencies, per-frame decode and inference."""
    n = len(results)
    return {
        "frames": n,
        "steady_fps": round(steady_rate([r.completed_at for r in results], WARMUP_FRAC), 2),
        "mean_batch_size": round(sum(r.batch_size for r in results) / n, 2),
        "decode_ms": round(median(r.timings_ms.decode for r in results), 3),
        "inference_ms": round(median(r.timings_ms.inference for r in results), 3),
        **result_latencies(results),
    }


# ------------------------------------------------------------------ the axes
def axis_cameras(sb: Sandbox, plan: Plan) -> dict[str, Any]:
    settings = _settings(sb)
    model = latency_model(settings)
    jpegs = test_frames(DISTINCT, 640, 480, settings.jpeg_quality)
    children, _, threads = start_workers(sb, "all", 1, model, "auto", BATCH)
    pids = _pids(sb, children)
    try:
        client = FramepoolClient(settings, model, jpegs)
        try:
            closed_loop(client, 2 * WINDOW, WINDOW)  # warm-up
            caps = [
                steady_rate([r.completed_at for r in closed_loop(client, plan.capacity_frames, WINDOW)],
                            WARMUP_FRAC)
                for _ in range(plan.repeats)
            ]  # fmt: skip
        finally:
            client.close()
        capacity = median(caps)
        _log(f"cameras: {model} capacity {capacity:.1f} frames/s (closed loop)")
        points: list[dict[str, Any]] = [
            {"cameras": n, "per_camera_fps": per_camera_fps(plan, n, capacity), "runs": []}
            for n in plan.cameras
        ]
        for r in range(plan.repeats):  # every point once per repeat: drift hits all alike
            for p in points:
                x = camera_point(settings, model, jpegs, p["cameras"], p["per_camera_fps"],
                                 plan.warmup_s, plan.window_s, seed=r, pids=pids)  # fmt: skip
                p["runs"].append(x)
                _log(f"cameras {p['cameras']:>3} repeat {r + 1}: {x['steady_fps']:.1f} frames/s, "
                     f"p99 {x['client_p99_ms']:.1f} ms, statuses {x['statuses']}")  # fmt: skip
    finally:
        for c in children:
            sb.stop(c)
    for p in points:
        p["offered_fps"] = round(p["cameras"] * p["per_camera_fps"], 3)
        p["per_camera_fps"] = round(p["per_camera_fps"], 4)
    return {
        "model": model,
        "frame": "640x480",
        "max_batch_size": BATCH,
        "torch_threads": threads,
        "capacity_fps": round(capacity, 2),
        "capacity_runs": [round(c, 2) for c in caps],
        "load": None if plan.camera_fps is not None else plan.load,
        "camera_fps": plan.camera_fps,
        "warmup_s": plan.warmup_s,
        "window_s": plan.window_s,
        "points": points,
    }


def axis_frame_size(sb: Sandbox, plan: Plan) -> dict[str, Any]:
    settings = _settings(sb)
    frames = {s: test_frames(DISTINCT, *s, quality=settings.jpeg_quality) for s in plan.sizes}
    children, _, threads = start_workers(sb, "all", 1, CLOSED_MODEL, "auto", BATCH)
    pids = _pids(sb, children)
    clients = {s: FramepoolClient(settings, CLOSED_MODEL, frames[s]) for s in plan.sizes}
    points: list[dict[str, Any]] = [
        {"width": w, "height": h,
         "jpeg_bytes": round(sum(map(len, frames[(w, h)])) / DISTINCT), "runs": []}
        for w, h in plan.sizes
    ]  # fmt: skip
    try:
        for s in plan.sizes:
            closed_loop(clients[s], WINDOW, WINDOW)  # warm-up, each size
        for r in range(plan.repeats):
            for p in points:
                x = closed_run(clients[(p["width"], p["height"])], plan.closed_frames, pids)
                p["runs"].append(x)
                _log(f"frame size {p['width']}x{p['height']} repeat {r + 1}: "
                     f"{x['steady_fps']:.1f} frames/s, decode {x['decode_ms']:.2f} ms")  # fmt: skip
    finally:
        for client in clients.values():
            client.close()
        for c in children:
            sb.stop(c)
    return {"model": CLOSED_MODEL, "max_batch_size": BATCH, "torch_threads": threads,
            "frames": plan.closed_frames, "points": points}  # fmt: skip


def axis_workers(sb: Sandbox, plan: Plan) -> dict[str, Any]:
    from benchmarks.scale import measure

    settings = _settings(sb)
    jpegs = test_frames(DISTINCT, 640, 480, settings.jpeg_quality)
    rows = [
        measure(sb, jpegs, "all", n, CLOSED_MODEL, plan.closed_frames, plan.repeats, "auto")
        for n in plan.workers
    ]
    points = [
        {"workers": row["workers"], "names": row["names"], "torch_threads": row["torch_threads"],
         "runs": row["runs"]}
        for row in rows
    ]  # fmt: skip
    return {"model": CLOSED_MODEL, "gpus": "all", "max_batch_size": BATCH,
            "frames": plan.closed_frames, "points": points}  # fmt: skip


def axis_batch_cap(sb: Sandbox, plan: Plan) -> dict[str, Any]:
    points = []
    threads = None
    for cap in plan.batch_caps:
        settings = _settings(sb, cap)
        jpegs = test_frames(DISTINCT, 640, 480, settings.jpeg_quality)
        _log(f"batch cap {cap}: starting worker")
        children, _, threads = start_workers(sb, "all", 1, CLOSED_MODEL, "auto", cap)
        client = FramepoolClient(settings, CLOSED_MODEL, jpegs)
        runs = []
        try:
            closed_loop(client, 2 * WINDOW, WINDOW)  # warm-up
            for r in range(plan.repeats):
                runs.append(closed_run(client, plan.closed_frames, _pids(sb, children)))
                _log(f"batch cap {cap} repeat {r + 1}: {runs[-1]['steady_fps']:.1f} frames/s, "
                     f"mean batch {runs[-1]['mean_batch_size']}")  # fmt: skip
        finally:
            client.close()
            for c in children:
                sb.stop(c)
        points.append({"batch_cap": cap, "concurrency": 2 * cap, "runs": runs})
    return {"model": CLOSED_MODEL, "torch_threads": threads, "frames": plan.closed_frames,
            "points": points}  # fmt: skip


def axis_redis_memory(sb: Sandbox, plan: Plan) -> dict[str, Any]:
    return redis_memory(sb.redis_url, plan.sizes, plan.memory_frames, _log)


RUNNERS: dict[str, Callable[[Sandbox, Plan], dict[str, Any]]] = {
    "cameras": axis_cameras,
    "frame_size": axis_frame_size,
    "workers": axis_workers,
    "batch_cap": axis_batch_cap,
    "redis_memory": axis_redis_memory,
}


# ------------------------------------------------------------------ entry point
def command_line(axes: list[str], quick: bool, plan: Plan) -> str:
    parts = ["framepool bench sweep", f"--axes {','.join(axes)}"]
    if quick:
        parts.append("--quick")
    if plan.repeats != (QUICK if quick else Plan()).repeats:
        parts.append(f"--repeats {plan.repeats}")
    if plan.camera_fps is not None:
        parts.append(f"--camera-fps {plan.camera_fps:g}")
    elif plan.load != LOAD:
        parts.append(f"--load {plan.load:g}")
    return " ".join(parts)


def main(*, axes: list[str], plan: Plan, quick: bool, out: Path, docs: bool, started: float) -> int:
    from benchmarks import sweep_report

    command = command_line(axes, quick, plan)
    info = machine_info()
    _log(f"{command}: {info['nproc']} CPUs, {info['cpu']}")
    measured: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}

    def body(sb: Sandbox) -> None:
        for axis in axes:
            t0 = time.time()
            _log(f"axis {axis}")
            try:
                data = RUNNERS[axis](sb, plan)
            except Exception as exc:  # the other axes still run; the exit code says 1
                errors[axis] = f"{type(exc).__name__}: {exc}"
                _log(f"axis {axis} failed: {errors[axis]}")
                # result handles in the frames hold Redis connections (see run_sandboxed)
                traceback.clear_frames(exc.__traceback__)
                gc.collect()
                continue
            date = utc_minute()
            measured[axis] = {**data, "date": date, "command": command,
                              "runtime_s": round(time.time() - t0, 1)}  # fmt: skip

    failed = run_sandboxed(body, quiet_logs())
    if failed is not None:
        return failed
    report: dict[str, Any] = {
        "command": command,
        "date": utc_minute(),
        "machine": info,
        "plan": asdict(plan),
        "measured": list(measured),
        "errors": errors,
        "axes": measured,
        "runtime_s": round(time.time() - started, 1),
    }
    code = sweep_report.save(report, out, docs)
    return 1 if errors else code
