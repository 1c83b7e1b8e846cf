"""``framepool bench scale``: frames/s of one model with 1, 2, 4 ... worker processes.

For each worker count N the workers are the ones ``framepool up --workers-per-gpu N``
plans (``workers.placement.plan_workers``: names, device, ``CUDA_VISIBLE_DEVICES``),
started by the benchmark's sandbox so that nothing outlives it, against one private
Redis. On CPU each worker gets ``cpus // N`` torch threads (``--threads``), so N
workers share the machine rather than oversubscribe it. One producer keeps the
queue fed (closed loop: between 2 and 4 times the workers' frames in flight
outstanding), 640x480 JPEGs; frames/s is taken from the workers' ``completed_at``
stamps over a steady window (the first 10% of completions dropped). Each count is
repeated; the median, the speed-up over one worker and the efficiency (speed-up / N)
are reported with each worker's share of the frames. Results go to a JSON file and
to docs/benchmarks.md.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import redis

from benchmarks.harness import (
    ROOT,
    machine_info,
    median,
    report_head,
    result_latencies,
    save_report,
    steady_rate,
    test_frames,
    update_bench_docs,
    utc_minute,
)
from benchmarks.pipeline import FramepoolClient
from benchmarks.sandbox import Child, Sandbox, run_sandboxed
from framepool import keys
from framepool.settings import Settings
from workers.heartbeat import serving
from workers.placement import plan_workers

DOCS = ROOT / "docs" / "benchmarks.md"
MARKS = (
    "<!-- bench-scale:latest:begin -->",
    "<!-- bench-scale:latest:end -->",
    "<!-- bench-scale:history:begin -->",
    "<!-- bench-scale:history:end -->",
)
BATCH = 8  # MAX_BATCH_SIZE of every worker
CONCURRENCY = 2 * BATCH  # each worker's frames in flight (the default, 2 x MAX_BATCH_SIZE)
WARMUP_FRAC = 0.1
DISTINCT_FRAMES = 16
START_TIMEOUT_S = 180.0


def _log(msg: str) -> None:
    print(f"[bench scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def torch_threads(spec: str, workers: int, device: str, cpus: int) -> int | None:
    """Threads for one worker: ``auto`` shares the CPUs among CPU workers (GPU: torch's own)."""
    if spec != "auto":
        return int(spec)
    return max(1, cpus // workers) if device == "cpu" else None


def start_workers(
    sb: Sandbox, gpus: str, n: int, model: str, threads: str, batch: int = BATCH
) -> tuple[list[Child], list[str], int | None]:
    specs = plan_workers(gpus, n, [model], "bench").specs
    per = torch_threads(threads, len(specs), specs[0].device, os.cpu_count() or 1)
    children = []
    for spec in specs:
        env = {
            "REDIS_URL": sb.redis_url,
            "MAX_BATCH_SIZE": str(batch),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "WARNING",
            "HEARTBEAT_INTERVAL_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
            **spec.env,
        }
        if per is not None:
            env["OMP_NUM_THREADS"] = str(per)
        children.append(sb.spawn(spec.name.replace("@", "_"), spec.argv(), env))
    names = [s.name for s in specs]
    client = redis.Redis.from_url(sb.redis_url)

    def all_ready() -> bool:
        beats = client.mget([keys.worker_heartbeat(n) for n in names])
        return all(serving(b) for b in beats)

    try:
        sb.wait_until(all_ready, START_TIMEOUT_S, f"{len(names)} workers to be ready", children)
    finally:
        client.close()
    return children, names, per


def closed_loop(client: FramepoolClient, n: int, window: int) -> list[Any]:
    """Keep between ``window`` and ``2 * window`` frames outstanding until ``n`` are read."""
    pending: deque[Any] = deque(client.submit(0, min(2 * window, n)))
    sent = len(pending)
    results = []
    while pending:
        results.append(client.read(pending.popleft()))
        if len(pending) < window and sent < n:
            count = min(window, n - sent)
            pending.extend(client.submit(sent, count))
            sent += count
    return results


def measure(
    sb: Sandbox, jpegs: list[bytes], gpus: str, n: int, model: str, frames: int,
    repeats: int, threads: str,
) -> dict[str, Any]:  # fmt: skip
    _log(f"--workers-per-gpu {n}: starting")
    children, names, per = start_workers(sb, gpus, n, model, threads)
    settings = Settings(redis_url=sb.redis_url, max_batch_size=BATCH)
    client = FramepoolClient(settings, model, jpegs)
    window = 2 * CONCURRENCY * len(names)
    runs: list[dict[str, Any]] = []
    try:
        closed_loop(client, min(frames, window), window)  # warm-up: every worker busy once
        for r in range(repeats):
            results = closed_loop(client, frames, window)
            fps = steady_rate([x.completed_at for x in results], WARMUP_FRAC)
            share = Counter(x.worker for x in results)
            runs.append(
                {
                    "steady_fps": round(fps, 2),
                    "mean_batch_size": round(sum(x.batch_size for x in results) / len(results), 2),
                    "share": {w: share.get(w, 0) for w in names},
                    **result_latencies(results),
                }
            )
            _log(f"{len(names)} worker(s), repeat {r + 1}: {fps:.1f} frames/s")
    finally:
        client.close()
        for child in children:
            sb.stop(child)
    return {"workers": len(names), "names": names, "torch_threads": per, "runs": runs}


def build_figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = median(r["steady_fps"] for r in rows[0]["runs"]) if rows else 0.0
    out = []
    for row in rows:
        fps = median(r["steady_fps"] for r in row["runs"])
        speedup = fps / base if base else float("nan")
        out.append(
            {
                "workers": row["workers"],
                "median_fps": round(fps, 2),
                "runs": [r["steady_fps"] for r in row["runs"]],
                "speedup": round(speedup, 3),
                "efficiency": round(speedup * rows[0]["workers"] / row["workers"], 3),
                "mean_batch_size": median(r["mean_batch_size"] for r in row["runs"]),
                "share": row["runs"][-1]["share"],
                "torch_threads": row["torch_threads"],
            }
        )
    return out


def _table(figs: list[dict[str, Any]]) -> str:
    lines = [
        "| worker processes | frames/s (median) | speed-up | efficiency | mean batch "
        "| torch threads each | frames per worker (last repeat) | repeats |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in figs:
        share = ", ".join(f"{w.split('@')[0]} {c}" for w, c in f["share"].items())
        runs = ", ".join(f"{v:.1f}" for v in f["runs"])
        lines.append(
            f"| {f['workers']} | {f['median_fps']:.1f} | {f['speedup']:.2f}x | "
            f"{f['efficiency']:.2f} | {f['mean_batch_size']:.1f} | {f['torch_threads'] or '-'} "
            f"| {share} | {runs} |"
        )
    return "\n".join(lines)


def latest_block(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    v = m["versions"]
    return "\n".join(
        [
            *report_head(report),
            f"- versions: Python {v['python']}, torch {v['torch']}, Celery {v['celery']}, "
            f"kombu {v['kombu']}, redis-server {v['redis-server']}",
            f"- {cfg['model']} on `--gpus {cfg['gpus']}`, MAX_BATCH_SIZE={BATCH}, "
            f"{CONCURRENCY} frames in flight per worker, {cfg['frames']} frames per repeat, "
            f"{cfg['repeats']} repeats, 640x480 JPEG",
            "",
            _table(report["figures"]),
        ]
    )


HISTORY_HEADER = (
    "| date | command | machine | frames/s by worker processes | efficiency | run time |\n"
    "|---|---|---|---|---|---|"
)


def history_row(report: dict[str, Any]) -> str:
    figs, m = report["figures"], report["machine"]
    fps = ", ".join(f"{f['workers']}: {f['median_fps']:.1f}" for f in figs)
    eff = ", ".join(f"{f['workers']}: {f['efficiency']:.2f}" for f in figs)
    return (
        f"| {report['date']} | `{report['command']}` | {m['nproc']}x {m['cpu']} | {fps} | "
        f"{eff} | {report['runtime_s']:.0f} s |"
    )


def update_docs(report: dict[str, Any], path: Path = DOCS) -> None:
    update_bench_docs(path, MARKS, "Scale-out: worker processes (`framepool bench scale`)",
                      __doc__, "scale", latest_block(report), HISTORY_HEADER,
                      history_row(report))  # fmt: skip


def _show(report: dict[str, Any]) -> None:
    print()
    print(_table(report["figures"]))


def main(
    *,
    model: str,
    counts: list[int],
    frames: int,
    repeats: int,
    gpus: str,
    threads: str,
    out: Path,
    docs: bool,
    started: float,
) -> int:
    command = (
        f"framepool bench scale --model {model} --workers {','.join(map(str, counts))} "
        f"--frames {frames} --repeats {repeats} --gpus {gpus}"
    )
    jpegs = test_frames(DISTINCT_FRAMES, quality=Settings().jpeg_quality)
    info = machine_info()
    _log(f"{command}: {info['nproc']} CPUs, {info['cpu']}")
    rows: list[dict[str, Any]] = []

    def body(sb: Sandbox) -> None:
        for n in counts:
            rows.append(measure(sb, jpegs, gpus, n, model, frames, repeats, threads))

    failed = run_sandboxed(body)
    if failed is not None:
        return failed
    report = {
        "command": command,
        "date": utc_minute(),
        "machine": info,
        "config": {
            "model": model,
            "gpus": gpus,
            "frames": frames,
            "repeats": repeats,
            "threads": threads,
            "max_batch_size": BATCH,
            "concurrency": CONCURRENCY,
        },  # fmt: skip
        "figures": build_figures(rows),
        "details": rows,
        "runtime_s": round(time.time() - started, 1),
    }
    return save_report(report, out, DOCS, update_docs, _show, write_docs=docs)
