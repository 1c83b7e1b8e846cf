"""``framepool bench pipeline``: framepool against its baselines, measured in one run.

(a) ``resnet18`` end to end, frames/s: 640x480 JPEGs submitted with
    ``FrameProducer.submit_many`` (closed loop, queue kept fed), results read
    back with ``FrameHandle.get``; against the model's own tight loop in one
    process (the worker's decode + preprocess, stack, forward, postprocess) at
    the same batch size and torch threads.
(b) ``noop`` (a model that does no work), frames/s of one worker process;
    against a plain Celery task doing the same full-size decode (one frame per
    task, ``apply_async`` per frame, result stored in and read from the Redis
    backend), same Redis and Celery configuration, ``-P solo`` and ``-P threads``.
(c) added latency (end to end minus inference) of ``resnet18`` at 10 frames/s
    open loop, p50/p99, and the producer-side round trip.

Throughput is taken from the workers' ``completed_at`` stamps over a steady
window (the first 10% of completions dropped). Each measurement is repeated;
the median of the repeats and its ratio to the baseline's median are reported.
Results go to a JSON file and to docs/benchmarks.md.

The pieces live beside this file: pipeline_clients.py (the producer side: the
clients, the CPU meter, a run's figures), pipeline_workers.py (the worker
processes), pipeline_tight_loop.py (the model's own loop) and pipeline_report.py
(the figures, the table and the docs block); this file runs the scenarios.
The other benchmarks and ad-hoc scripts still import the shared pieces from
here (CpuMeter, FramepoolClient, tight_loop, start_framepool_worker(s), ...).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import machine_info, save_report, test_frames, utc_minute
from benchmarks.pipeline_clients import (
    WARMUP_FRAC,
    CpuMeter,
    FramepoolClient,
    PlainClient,
    Run,
    _warm,
)
from benchmarks.pipeline_clients import plain_value as plain_value  # re-export: gpu.py
from benchmarks.pipeline_report import (  # the figures and the docs block
    BATCH,
    CHUNK,
    CONCURRENCY,
    DOCS,
    build_figures,
    print_table,
    update_docs,
)
from benchmarks.pipeline_tight_loop import tight_loop
from benchmarks.pipeline_workers import _worker_env as _worker_env  # re-export: scripts
from benchmarks.pipeline_workers import start_framepool_worker, start_plain_worker
from benchmarks.pipeline_workers import start_framepool_workers as start_framepool_workers
from benchmarks.sandbox import Child, Sandbox, run_sandboxed
from benchmarks.sandbox import quiet_logs as _quiet_logs
from framepool.settings import Settings

LATENCY_FPS = 10.0
LATENCY_MODEL = "shape_detector"
LATENCY_MAX_FRAMES = 300
PLAIN_LATENCY_DIVISOR = 3  # the plain Celery latency reference: a third of (c)'s frames
NOOP_FRAMES_FACTOR = 2  # (b) runs are short (~200 frames/s): twice the frames steadies them
DISTINCT_FRAMES = 16


# ------------------------------------------------------------------ scenarios
def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def scenario_resnet18(
    sb: Sandbox, jpegs: Sequence[bytes], frames: int, repeats: int, threads: int
) -> dict[str, Any]:
    settings = Settings(redis_url=sb.redis_url, max_batch_size=BATCH)
    _log("(a) resnet18: starting worker")
    worker = start_framepool_worker(sb, "resnet18", threads)
    client = FramepoolClient(settings, "resnet18", jpegs)
    pids = {"worker": worker.pid, "redis": sb.redis.proc.pid}
    loops: list[Run] = []
    e2es: list[Run] = []
    # the loop is steady from its first batch: half the frames are enough
    loop_frames = max(8 * BATCH, frames // 2)
    try:
        _warm(client, 2 * CHUNK)
        for r in range(repeats):
            loops.append(tight_loop(settings, jpegs, loop_frames, threads))
            _log(f"(a) repeat {r + 1}: tight loop {loops[-1].steady_fps:.1f} frames/s")
            e2es.append(client.closed_loop(frames, CpuMeter(pids)))
            _log(
                f"(a) repeat {r + 1}: end to end {e2es[-1].steady_fps:.1f} frames/s "
                f"(mean batch {e2es[-1].extra['mean_batch_size']})"
            )
    finally:
        client.close()
        sb.stop(worker)
    return {"loop": loops, "e2e": e2es}


def latency_model(settings: Settings) -> str:
    """shape_detector (the camera model) when the zoo has it in working order, else resnet18."""
    from framepool.manifest import discover

    found, _ = discover(settings.models_root)
    return LATENCY_MODEL if LATENCY_MODEL in found else "resnet18"


def scenario_latency(
    sb: Sandbox, jpegs: Sequence[bytes], frames: int, repeats: int, threads: int
) -> dict[str, Any]:
    settings = Settings(redis_url=sb.redis_url, max_batch_size=BATCH)
    model_id = latency_model(settings)
    _log(f"(c) {model_id}: starting worker")
    worker = start_framepool_worker(sb, model_id, threads)
    client = FramepoolClient(settings, model_id, jpegs)
    lats: list[dict[str, Any]] = []
    try:
        _warm(client, 2 * CHUNK)
        for r in range(repeats):
            meter = CpuMeter({"worker": worker.pid, "redis": sb.redis.proc.pid})
            x = client.open_loop(frames, LATENCY_FPS)
            x["cpu_ms_per_frame"] = meter.per_frame_ms(frames)
            lats.append(x)
            _log(
                f"(c) repeat {r + 1}: added p50 {x['added_p50_ms']:.2f} ms p99 "
                f"{x['added_p99_ms']:.2f} ms; round trip p50 {x['e2e_p50_ms']:.2f} ms "
                f"p99 {x['e2e_p99_ms']:.2f} ms"
            )
    finally:
        client.close()
        sb.stop(worker)
    return {"model": model_id, "latency": lats}


def scenario_noop(
    sb: Sandbox,
    jpegs: Sequence[bytes],
    frames: int,
    repeats: int,
    threads: int,
    latency_frames: int,
) -> dict[str, Any]:
    settings = Settings(redis_url=sb.redis_url, max_batch_size=BATCH)
    _log("noop: starting workers (framepool, plain -P solo, plain -P threads)")
    fp_worker = start_framepool_worker(sb, "noop", threads)
    solo = start_plain_worker(sb, "solo", "bench.plain.solo", threads)
    thr = start_plain_worker(sb, "threads", "bench.plain.threads", threads)
    fp = FramepoolClient(settings, "noop", jpegs)
    plain_solo = PlainClient(sb.redis_url, jpegs, "bench.plain.solo")
    plain_thr = PlainClient(sb.redis_url, jpegs, "bench.plain.threads")
    out: dict[str, list[Any]] = {
        "framepool": [],
        "framepool_2": [],
        "plain_solo": [],
        "plain_threads": [],
        "plain_latency": [],
    }
    try:
        for c in (plain_solo, plain_thr, fp):
            _warm(c, 2 * CHUNK)
        order: list[tuple[str, Any, Child]] = [
            ("framepool", fp, fp_worker),
            ("plain_solo", plain_solo, solo),
            ("plain_threads", plain_thr, thr),
        ]
        for r in range(repeats):
            # rotate the order so no system always runs first (or right after another)
            for key, c, w in order[r % 3 :] + order[: r % 3]:
                run = c.closed_loop(frames, CpuMeter({"worker": w.pid, "redis": sb.redis.proc.pid}))
                out[key].append(run)
                _log(f"(b) repeat {r + 1}: {key} {run.steady_fps:.1f} frames/s")
        # the same framepool closed loop with a second worker process on the queue
        fp_worker2 = start_framepool_worker(sb, "noop", threads, name="fp-noop-2")
        _warm(fp, 2 * CHUNK)
        for r in range(repeats):
            pids = {"worker": fp_worker.pid, "worker2": fp_worker2.pid, "redis": sb.redis.proc.pid}
            run = fp.closed_loop(frames, CpuMeter(pids))
            out["framepool_2"].append(run)
            _log(
                f"(b2) repeat {r + 1}: framepool, 2 worker processes {run.steady_fps:.1f} frames/s"
            )
        sb.stop(fp_worker2)
        for r in range(repeats):
            x = plain_solo.open_loop(latency_frames, LATENCY_FPS)
            out["plain_latency"].append(x)
            _log(
                f"(c) repeat {r + 1}: plain Celery -P solo enqueue-to-completed p50 "
                f"{x['added_p50_ms']:.2f} ms p99 {x['added_p99_ms']:.2f} ms; round trip p50 "
                f"{x['e2e_p50_ms']:.2f} ms p99 {x['e2e_p99_ms']:.2f} ms"
            )
    finally:
        for c in (fp, plain_solo, plain_thr):
            with contextlib.suppress(Exception):
                c.close()
        for w in (thr, solo, fp_worker):
            sb.stop(w)
    return out


# ------------------------------------------------------------------ entry point
def main(frames: int, repeats: int, out: Path, started: float, docs: bool = True) -> int:
    command = f"framepool bench pipeline --frames {frames} --repeats {repeats}"
    latency_frames = max(10, min(LATENCY_MAX_FRAMES, frames // 2))
    import torch

    threads = torch.get_num_threads()
    defaults = Settings()
    jpegs = test_frames(DISTINCT_FRAMES, quality=defaults.jpeg_quality)
    info = machine_info()
    _log(f"{command}: {info['nproc']} CPUs, {info['cpu']}; torch threads {threads}")
    res: dict[str, Any] = {}
    noop: dict[str, Any] = {}

    def body(sb: Sandbox) -> None:
        res.update(scenario_resnet18(sb, jpegs, frames, repeats, threads))
        res.update(scenario_latency(sb, jpegs, latency_frames, repeats, threads))
        noop_frames = NOOP_FRAMES_FACTOR * frames
        plain_frames = max(10, latency_frames // PLAIN_LATENCY_DIVISOR)
        noop.update(scenario_noop(sb, jpegs, noop_frames, repeats, threads, plain_frames))

    failed = run_sandboxed(body, _quiet_logs())
    if failed is not None:
        return failed
    runtime = time.time() - started
    report: dict[str, Any] = {
        "command": command,
        "date": utc_minute(),
        "machine": info,
        "config": {
            "frames": frames,
            "noop_frames": NOOP_FRAMES_FACTOR * frames,
            "loop_frames": max(8 * BATCH, frames // 2),
            "repeats": repeats,
            "latency_frames": latency_frames,
            "plain_latency_frames": max(10, latency_frames // PLAIN_LATENCY_DIVISOR),
            "latency_fps": LATENCY_FPS,
            "latency_model": res["model"],
            "max_batch_size": BATCH,
            "batch_timeout_ms": defaults.batch_timeout_ms,
            "concurrency": CONCURRENCY,
            "torch_threads": threads,
            "closed_loop_chunk": CHUNK,
            "warmup_frac": WARMUP_FRAC,
            "jpeg_quality": defaults.jpeg_quality,
            "jpeg_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1024),
        },
        "figures": build_figures(res, noop),
        "details": {
            "a_loop": [r.as_dict() for r in res["loop"]],
            "a_e2e": [r.as_dict() for r in res["e2e"]],
            "c_latency": res["latency"],
            "b_framepool": [r.as_dict() for r in noop["framepool"]],
            "b_plain_solo": [r.as_dict() for r in noop["plain_solo"]],
            "b_plain_threads": [r.as_dict() for r in noop["plain_threads"]],
            "b_framepool_2": [r.as_dict() for r in noop["framepool_2"]],
            "c_plain_latency": noop["plain_latency"],
        },
        "runtime_s": round(runtime, 1),
    }
    return save_report(report, out, DOCS, update_docs, _show, write_docs=docs)


def _show(report: dict[str, Any]) -> None:
    print()
    print_table(report["figures"])
