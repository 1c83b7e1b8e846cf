"""``framepool bench gpu``: one model on one GPU end to end, against the model's own
limit and plain Celery, with the GPU's utilization (issue #7's GPU goals).

By default resnet50 in its manifest's precision (fp16 on CUDA) at a batch cap of
64, on 640x480 JPEG q90 frames:

- *limit*: the model's own throughput in one process, written as a user would
  write it by hand: a pool of threads (one per CPU) prepares the next batches
  while the GPU runs this one, each batch goes through ``model.collate``,
  ``model.to_device``, ``model.infer`` and ``model.postprocess``. Where the model
  decodes JPEG on the GPU (``model.accepts_jpeg``: torchvision's nvJPEG) the
  threads only check each frame's header, as the worker does; else they run
  ``framepool.codec.decode`` + ``model.preprocess``.
- *framepool*: 1, 2 ... real ``framepool worker --device cuda:0`` processes with
  ``MAX_BATCH_SIZE=batch``, frames through ``FrameProducer`` from ``--clients``
  producer processes (each keeping 2-4 batches outstanding, one camera each;
  :mod:`benchmarks.producer_procs`: one process cannot drive a GPU's workers),
  results read back.
- *plain Celery*: ``benchmarks.plain_celery``'s ``bench.infer``: one frame per
  task, the same decode/preprocess/forward/postprocess at batch 1, a threads pool
  of ``PLAIN_CONCURRENCY``, the Redis result backend; ``--clients`` threads of
  this process send its frames (it runs at tens of frames/s).

Throughput comes from the completion stamps after the first 10% (as in ``bench
peers``); GPU utilization is NVML's (the share of time a kernel ran), sampled every
0.1 s and averaged over the same window. Each framepool and plain Celery run is
paired with a limit run just before it; ratios are per pair, medians reported.
Without CUDA, ``--device cpu`` runs the same steps as a trial (no utilization).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import gpu_report
from benchmarks.gpu_meters import ProcCpu, UtilSampler, steady_window, util_index
from benchmarks.gpu_plain import PlainInferPeer, run_clients
from benchmarks.harness import machine_info, save_report, test_frames, utc_minute
from benchmarks.peers_clients import Reply
from benchmarks.peers_model import on_device, prepare
from benchmarks.peers_stats import WARMUP_FRAC, batch_rate, closed_stats
from benchmarks.pipeline import start_framepool_workers, start_plain_worker
from benchmarks.producer_procs import ProducerProcesses
from benchmarks.sandbox import BenchError, Sandbox, run_measure
from framepool.settings import Settings
from workers.mps import start_mps

DISTINCT_FRAMES = 16
FRAME_SIZE = (640, 480)
PLAIN_CONCURRENCY = 8  # a hand-rolled GPU worker's threads: enough to keep one stream busy


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Plan:
    model: str
    batch: int
    frames: int
    repeats: int
    workers: tuple[int, ...]
    clients: int
    device: str
    decode_threads: int


# ------------------------------------------------------------------ the limit
class LimitLoop:
    """The model in this process, decode threads feeding the device (module doc)."""

    def __init__(self, settings: Settings, plan: Plan, jpegs: Sequence[bytes]) -> None:
        from models.registry import load_model

        self.settings, self.plan, self.jpegs = settings, plan, jpegs
        self.model = load_model(settings.models_root, plan.model, plan.device)
        self.model.warmup(batch_size=plan.batch)
        self.pool = ThreadPoolExecutor(plan.decode_threads, thread_name_prefix="decode")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _prep(self, i: int) -> Any:
        """As the worker's task thread (:func:`benchmarks.peers_model.prepare`)."""
        s = self.settings
        return prepare(self.model, self.jpegs[i % len(self.jpegs)], s.max_frame_bytes,
                       s.max_frame_pixels)  # fmt: skip

    def run(self, n: int, depth: int = 4) -> list[float]:
        """``n`` frames in batches, ``depth`` batches decoding ahead; one stamp a frame."""
        import torch

        model, batch = self.model, self.plan.batch
        starts = list(range(0, n, batch))
        pending: deque[list[Future[Any]]] = deque()

        def queue_next() -> None:
            if starts:
                s = starts.pop(0)
                pending.append(
                    [self.pool.submit(self._prep, i) for i in range(s, min(s + batch, n))]
                )

        for _ in range(depth):
            queue_next()
        stamps: list[float] = []
        while pending:
            futs = pending.popleft()
            queue_next()
            x = on_device(model, [f.result() for f in futs])
            with torch.inference_mode():
                raw = model.infer(x)
                outputs = model.postprocess(raw, [FRAME_SIZE] * len(futs))
            if len(outputs) != len(futs):
                raise BenchError(f"limit: {len(outputs)} outputs for {len(futs)} frames")
            done = time.time()
            stamps.extend([done] * len(futs))
        return stamps


# ------------------------------------------------------------------ measuring
def _measured(
    plan: Plan, fn: Callable[[], tuple[list[float], float, list[Reply] | None]]
) -> dict[str, Any]:
    with UtilSampler(util_index(plan.device)) as util:
        stamps, wall, replies = fn()
    start, end = steady_window(stamps)
    stats: dict[str, Any] = {
        "frames": len(stamps),
        "steady_fps": round(batch_rate(stamps), 2),
        "wall_fps": round(len(stamps) / wall, 2) if wall > 0 else None,
        "gpu_util_percent": util.mean_between(start, end),
    }
    stats["mean_batch_size"] = (
        float(plan.batch) if replies is None else closed_stats(replies, wall)["mean_batch_size"]
    )
    return stats


def _limit(plan: Plan, loop: LimitLoop, n: int) -> dict[str, Any]:
    def fn() -> tuple[list[float], float, None]:
        t0 = time.perf_counter()
        stamps = loop.run(n)
        return stamps, time.perf_counter() - t0, None

    return _measured(plan, fn)


def _served(plan: Plan, drive: Callable[[int, int], tuple[list[Reply], float]], n: int,
            chunk: int, pids: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    cpu = ProcCpu(pids)

    def fn() -> tuple[list[float], float, list[Reply]]:
        replies, wall = drive(n, chunk)
        return [r.completed_at for r in replies], wall, replies

    stats = _measured(plan, fn)
    stats.update(cpu.stop(stats["frames"]))
    return stats


def _pids(sb: Sandbox, workers: Sequence[Any], producers: Sequence[int]) -> dict[str, int]:
    """The processes whose CPU a run reports: workers, producers, redis-server."""
    pids = {f"worker-{k}": w.pid for k, w in enumerate(workers)}
    pids.update({f"producer-{k}": pid for k, pid in enumerate(producers)})
    pids["redis"] = sb.redis.proc.pid
    return pids


def _pair(res: dict[str, Any], key: str, plan: Plan, loop: LimitLoop, r: int,
          served: Callable[[], dict[str, Any]]) -> None:  # fmt: skip
    lim = _limit(plan, loop, plan.frames)
    got = served()
    got["limit_fps"] = lim["steady_fps"]
    got["limit_gpu_util_percent"] = lim["gpu_util_percent"]
    got["ratio"] = round(got["steady_fps"] / lim["steady_fps"], 3)
    res.setdefault(key, []).append(got)
    _log(f"repeat {r + 1}: limit {lim['steady_fps']:.0f} frames/s (GPU {lim['gpu_util_percent']}%), "
         f"{key} {got['steady_fps']:.0f} frames/s = {got['ratio']:.2f}x "
         f"(GPU {got['gpu_util_percent']}%, mean batch {got['mean_batch_size']}); CPU ms/frame "
         f"{got['cpu_ms_per_frame']}, busiest process of each kind {got['busiest_cpus']} CPUs")  # fmt: skip


def measure(sb: Sandbox, plan: Plan, jpegs: Sequence[bytes]) -> dict[str, Any]:
    settings = Settings(redis_url=sb.redis_url, max_batch_size=plan.batch)
    res: dict[str, Any] = {}
    _log(f"limit: loading {plan.model} on {plan.device}")
    loop = LimitLoop(settings, plan, jpegs)
    res["precision"] = loop.model.precision
    res["jpeg_on_device"] = loop.model.accepts_jpeg
    chunk = 2 * plan.batch
    try:
        _limit(plan, loop, 2 * plan.batch)  # warm-up
        for w in plan.workers:
            names = [f"fp-{plan.model}-{w}-{k}" for k in range(w)]
            # as `framepool up` does (CUDA_MPS): the workers alone, not the limit loop
            mps, note = start_mps(settings.cuda_mps, [plan.device] * w, sb.dir / f"mps-{w}")
            res.setdefault("mps", {})[str(w)] = note
            _log(f"framepool: starting {w} worker(s) on {plan.device}; MPS {note}")
            try:
                env = mps.env if mps is not None else None
                workers = start_framepool_workers(sb, plan.model, 1, plan.device, names,
                                                  plan.batch, env)  # fmt: skip
                procs = ProducerProcesses(sb.redis_url, plan.batch, plan.model, jpegs,
                                          plan.clients)  # fmt: skip
                try:
                    procs.run(4 * chunk * plan.clients, chunk)  # warm-up (and their start)
                    pids = _pids(sb, workers, procs.pids())
                    for r in range(plan.repeats):
                        served = partial(_served, plan, procs.run, plan.frames, chunk, pids)
                        _pair(res, f"framepool_{w}", plan, loop, r, served)
                finally:
                    procs.close()
                    for child in workers:
                        sb.stop(child)
            finally:  # after its clients, the workers
                if mps is not None:
                    mps.stop()
        _log(f"plain Celery: starting a threads worker (-c {PLAIN_CONCURRENCY})")
        env = {"PLAIN_MODEL": plan.model, "PLAIN_DEVICE": plan.device}
        from benchmarks.plain_celery import INFER_QUEUE

        plain = start_plain_worker(sb, "threads", INFER_QUEUE, 1, PLAIN_CONCURRENCY, env)
        peers = [PlainInferPeer(sb.redis_url, jpegs) for _ in range(plan.clients)]
        plain_frames = max(64, plan.frames // 4)  # one frame per forward pass: slower
        try:
            run_clients(peers, 2 * PLAIN_CONCURRENCY * plan.clients, PLAIN_CONCURRENCY)  # warm-up
            for r in range(plan.repeats):
                drive = partial(run_clients, peers)
                pids = _pids(sb, [plain], [os.getpid()])
                served = partial(_served, plan, drive, plain_frames, PLAIN_CONCURRENCY, pids)
                _pair(res, "plain_celery", plan, loop, r, served)
        finally:
            for p in peers:
                p.close()
            sb.stop(plain)
    finally:
        loop.close()
    return res


# ------------------------------------------------------------------ entry point
def command_line(plan: Plan, explicit_device: bool) -> str:
    parts = [f"framepool bench gpu --model {plan.model} --batch {plan.batch}",
             f"--frames {plan.frames} --repeats {plan.repeats}",
             f"--workers {','.join(map(str, plan.workers))} --clients {plan.clients}"]  # fmt: skip
    if explicit_device:
        parts.append(f"--device {plan.device}")
    return " ".join(parts)


def main(*, model: str, batch: int, frames: int, repeats: int, workers: Sequence[int],
         clients: int, device: str | None, out: Path, started: float,
         docs: bool = True) -> int:  # fmt: skip
    import torch

    if device is None:
        if not torch.cuda.is_available():
            print("framepool bench gpu: no CUDA device (torch.cuda.is_available() is False); "
                  "--device cpu runs the same steps as a trial")  # fmt: skip
            return 2
        device = "cuda:0"
    threads = os.cpu_count() or 1
    plan = Plan(model, batch, frames, repeats, tuple(workers), clients, device, threads)
    command = command_line(plan, explicit_device=device != "cuda:0")
    info = machine_info()
    info["device"] = device
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["versions"]["cuda"] = torch.version.cuda
        with contextlib.suppress(ImportError):
            import torchvision

            info["versions"]["torchvision"] = torchvision.__version__
    jpegs = test_frames(DISTINCT_FRAMES, quality=Settings().jpeg_quality)
    _log(f"{command}: {info['nproc']} CPUs; {info.get('gpu', device)}")
    res = run_measure(lambda sb: measure(sb, plan, jpegs))
    if isinstance(res, int):
        return res
    report: dict[str, Any] = {
        "command": command,
        "date": utc_minute(),
        "machine": info,
        "config": {
            "model": model,
            "precision": res.pop("precision"),
            "jpeg_on_device": res.pop("jpeg_on_device"),
            "mps": res.pop("mps", {}),  # per worker count: CUDA_MPS's outcome
            "max_batch_size": batch,
            "frames": frames,
            "repeats": repeats,
            "workers": list(workers),
            "clients": clients,
            "outstanding_per_client": [2 * batch, 4 * batch],
            "decode_threads": threads,
            "plain_concurrency": PLAIN_CONCURRENCY,
            "warmup_frac": WARMUP_FRAC,
            "jpeg_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1024),
        },
        "details": res,
        "runtime_s": round(time.time() - started, 1),
    }
    report["figures"] = gpu_report.build_figures(report)
    return save_report(report, out, gpu_report.DOCS, gpu_report.update_docs, gpu_report.print_summary,
                       write_docs=docs)  # fmt: skip
