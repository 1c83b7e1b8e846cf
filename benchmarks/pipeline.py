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
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.harness import (
    BenchError,
    Child,
    Sandbox,
    machine_info,
    median,
    percentile,
    run_sandboxed,
    save_report,
    steady_rate,
    test_frames,
    utc_minute,
)
from benchmarks.harness import closed_loop as _closed_loop
from benchmarks.harness import machine_busy_s as _machine_busy
from benchmarks.harness import proc_cpu_s as _proc_cpu
from benchmarks.harness import quiet_logs as _quiet_logs
from benchmarks.pipeline_report import (  # the figures and the docs block
    BATCH,
    CHUNK,
    CONCURRENCY,
    DOCS,
    build_figures,
    print_table,
    update_docs,
)
from framepool import keys
from framepool.errors import ResultTimeout
from framepool.settings import Settings

WARMUP_FRAC = 0.1
LATENCY_FPS = 10.0
LATENCY_MODEL = "shape_detector"
LATENCY_MAX_FRAMES = 300
PLAIN_LATENCY_DIVISOR = 3  # the plain Celery latency reference: a third of (c)'s frames
NOOP_FRAMES_FACTOR = 2  # (b) runs are short (~200 frames/s): twice the frames steadies them
DISTINCT_FRAMES = 16
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
            "frames": n,
            "fps": fps,
            "max_submit_lateness_ms": round(late * 1000.0, 3),
            "added_p50_ms": round(percentile(added, 50), 3),
            "added_p99_ms": round(percentile(added, 99), 3),
            "e2e_p50_ms": round(percentile(e2e, 50), 3),
            "e2e_p99_ms": round(percentile(e2e, 99), 3),
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
        return {
            "frames": n,
            "fps": fps,
            "max_submit_lateness_ms": round(late * 1000.0, 3),
            "added_p50_ms": round(percentile(added, 50), 3),
            "added_p99_ms": round(percentile(added, 99), 3),
            "e2e_p50_ms": round(percentile(e2e, 50), 3),
            "e2e_p99_ms": round(percentile(e2e, 99), 3),
        }


# ------------------------------------------------------------------ workers
def _worker_env(sb: Sandbox, threads: int, batch: int = BATCH) -> dict[str, str]:
    return {
        "REDIS_URL": sb.redis_url,
        "MAX_BATCH_SIZE": str(batch),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }


def start_framepool_worker(
    sb: Sandbox, model_id: str, threads: int, device: str = "cpu", name: str | None = None,
    batch: int = BATCH,
) -> Child:  # fmt: skip
    return start_framepool_workers(sb, model_id, threads, device, [name or f"fp-{model_id}"],
                                   batch)[0]  # fmt: skip


def start_framepool_workers(
    sb: Sandbox, model_id: str, threads: int, device: str, names: Sequence[str],
    batch: int = BATCH,
) -> list[Child]:  # fmt: skip
    """One ``framepool worker`` per name, started together; back when all serve."""
    children = []
    for name in names:
        argv = [sys.executable, "-m", "framepool.cli", "worker", "--device", device]
        argv += ["--models", model_id, "--name", f"{name}@bench"]
        children.append(sb.spawn(name, argv, _worker_env(sb, threads, batch)))
    client = redis.Redis.from_url(sb.redis_url)

    def ready() -> bool:  # these very workers consume (another may serve the model already)
        beats = client.mget([keys.worker_heartbeat(f"{name}@bench") for name in names])
        return all(b is not None and b'"state":"ready"' in b for b in beats)

    try:
        sb.wait_until(ready, 120, f"workers {', '.join(names)} to serve {model_id}", children)
    finally:
        client.close()
    return children


def start_plain_worker(
    sb: Sandbox, pool: str, queue: str, threads: int, concurrency: int = CONCURRENCY,
    env: dict[str, str] | None = None,
) -> Child:  # fmt: skip
    name = f"plain-{pool}"
    argv = [sys.executable, "-m", "celery", "-A", "benchmarks.plain_celery", "worker"]
    argv += ["-P", pool, "-Q", queue, "-n", f"{name}@bench", "-l", "WARNING"]
    # as framepool's worker: no mingle, no gossip, fair scheduling; events from the config
    argv += ["--without-mingle", "--without-gossip", "-O", "fair"]
    if pool != "solo":
        argv += ["-c", str(concurrency)]
    return sb.spawn(name, argv, {**_worker_env(sb, threads), **(env or {})})


def _warm(closed: Any, frames: int) -> None:
    _closed_loop(frames, closed.submit, closed.read)


# ------------------------------------------------------------------ tight loop
def tight_loop(
    settings: Settings, jpegs: Sequence[bytes], n: int, threads: int, device: str = "cpu"
) -> Run:
    """resnet18's decode + preprocess + forward + postprocess in one process, batch BATCH.

    Threads as in the worker: the model is loaded and warmed up in the main
    thread (``WorkerRuntime.load``), and the loop runs in a thread of its own
    (the worker's model runner). This matters with torch's OpenMP build: the
    thread that first ran a parallel region owns the spinning thread team, and
    on this 2-core machine with anything else running, a forward pass from that
    thread is up to 3x slower than the same pass from any other thread.
    """
    import torch

    torch.set_num_threads(threads)  # the worker gets OMP_NUM_THREADS=threads
    _loop_model(settings, device)  # load + warm up here, in the main thread
    box: list[Run | BaseException] = []

    def target() -> None:
        try:
            box.append(_tight_loop(settings, jpegs, n, threads, device))
        except BaseException as exc:  # re-raised in the caller
            box.append(exc)

    thread = threading.Thread(target=target, name="tight-loop", daemon=True)
    thread.start()
    while thread.is_alive():  # join with a timeout so Ctrl-C is seen
        thread.join(0.2)
    if not box:
        raise BenchError("tight loop thread ended without a result")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _tight_loop(
    settings: Settings, jpegs: Sequence[bytes], n: int, threads: int, device: str = "cpu"
) -> Run:
    import numpy as np
    import torch

    from framepool.codec import decode

    model = _loop_model(settings, device)
    min_size = model.manifest.input_size
    k = len(jpegs)

    def one_batch(start: int, count: int) -> None:
        inputs, sizes = [], []
        for i in range(start, start + count):
            image = decode(
                jpegs[i % k],
                max_bytes=settings.max_frame_bytes,
                max_pixels=settings.max_frame_pixels,
                min_size=min_size,
            )
            inputs.append(model.preprocess(image))
            sizes.append((640, 480))
        x = torch.from_numpy(np.stack(inputs)).to(model.device)
        with torch.inference_mode():
            raw = model.infer(x)
            outputs = model.postprocess(raw, sizes)
        assert len(outputs) == count

    one_batch(0, BATCH)  # warm-up
    meter = CpuMeter({})
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        one_batch(start, min(BATCH, n - start))
    wall = time.perf_counter() - t0
    cpu = meter.per_frame_ms(n)
    cpu["loop"] = cpu.pop("producer")
    return Run(frames=n, steady_fps=n / wall, wall_fps=n / wall, cpu_ms_per_frame=cpu)


_MODEL_CACHE: dict[str, Any] = {}


def _loop_model(settings: Settings, device: str = "cpu") -> Any:
    from models.registry import load_model

    key = f"resnet18@{device}"
    if key not in _MODEL_CACHE:
        model = load_model(settings.models_root, "resnet18", device)
        model.warmup(batch_size=1)  # as the worker does, in the loading thread
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


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
def main(frames: int, repeats: int, out: Path, started: float) -> int:
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
    return save_report(report, out, DOCS, update_docs, _show)


def _show(report: dict[str, Any]) -> None:
    print()
    print_table(report["figures"])
