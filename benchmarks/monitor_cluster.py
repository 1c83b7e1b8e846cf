"""A simulated cluster for ``framepool bench monitor``: heartbeats as real workers write them.

:class:`FakeCluster` holds ``hosts x gpus_per_host x workers_per_gpu`` workers, each
serving the same ``models``. Every model keeps a real :class:`workers.stats.ModelStats`
(all eight stage histograms, frame sizes, batch sizes) fed with seeded random
batches, and a kernel table of ``kernels`` rows shaped like
``KernelTable.top()`` (CUDA kernels with their long template names and CPU ops,
names shared between models as they are between real networks). A heartbeat is
the document ``workers/snapshot.py`` builds, written by the workers' own writer
(:class:`workers.heartbeat.Heartbeat`: compact JSON, ``SET ... EX ttl``, ``SADD``;
the kernel tables under their own key, rewritten only when their stamp moves).

:meth:`FakeCluster.advance` runs more frames through one worker's models, so its
next heartbeat differs in every counter and histogram as a busy worker's would;
kernel rows stay as they are (``PROFILE_EVERY_N_BATCHES=0``, the default: the
table only changes after ``framepool profile``) unless ``kernels_change``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from framepool import keys
from workers.heartbeat import Heartbeat, KernelIndex, wire_stats
from workers.stats import ModelStats

#: Typical per-stage times (ms) of a busy GPU worker; each frame draws around them.
STAGE_MS = {
    "queue": 8.0,
    "batch_wait": 1.5,
    "decode": 1.2,
    "preprocess": 0.6,
    "host_to_device": 0.3,
    "inference": 4.0,
    "postprocess": 0.4,
}
_CUDA_TEMPLATES = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::{op}_kernel_cuda"
    "(at::TensorIteratorBase&)::{{lambda()#1}}::operator()() const::{{lambda(float)#{i}}}, "
    "at::detail::Array<char*, 2> >(int, at::native::{op}_functor<float>, at::detail::Array<char*, 2>)",
    "sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize{t}x128x32_warpgroupsize1x1x1_execute_"
    "segment_k_off_kernel__5x_cublas_{i}",
    "void cudnn::engines_precompiled::nchwToNhwcKernel<float, float, float, false, true, "
    "(cudnnKernelDataType_t)2>(cudnn::engines_precompiled::nchw2nhwc_params_t<float>, {i})",
    "void implicit_convolve_sgemm<float, float, {t}, 5, 5, 3, 3, 3, 1, false, false, true>"
    "(int, int, int, float const*, int, float*, float const*, kernel_conv_params, {i})",
)
_CPU_OPS = (
    "aten::conv2d", "aten::convolution", "aten::_convolution", "aten::cudnn_convolution",
    "aten::addmm", "aten::batch_norm", "aten::relu_", "aten::max_pool2d", "aten::add_",
    "aten::empty", "aten::to", "aten::copy_", "cudaLaunchKernel", "cudaMemcpyAsync",
    "aten::adaptive_avg_pool2d", "aten::linear", "aten::flatten", "aten::view",
)  # fmt: skip
_OPS = ("relu", "add", "mul", "sigmoid", "threshold", "clamp", "fill", "div")


def kernel_names(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` distinct (name, device_type) pairs: three in five CUDA kernels, the rest CPU ops."""
    rng = random.Random(seed)
    names: list[tuple[str, str]] = []
    for i in range(count):
        if i % 5 < 3:
            template = _CUDA_TEMPLATES[i % len(_CUDA_TEMPLATES)]
            name = template.format(op=rng.choice(_OPS), i=i, t=rng.choice((64, 128, 256)))
            names.append((name, "cuda"))
        else:
            names.append((f"{_CPU_OPS[i % len(_CPU_OPS)]}#{i}", "cpu"))
    return names


@dataclass
class _Model:
    model_id: str
    stats: ModelStats
    kernel_names: list[tuple[str, str]]
    kernel_scale: float
    inferences: int = 0
    errors: int = 0


@dataclass
class FakeWorker:
    name: str
    hostname: str
    gpu_index: int
    uuid: str
    pid: int
    models: dict[str, _Model] = field(default_factory=dict)
    beats: int = 0
    kernel_version: int = 0  # as KernelTable.version: moves when a row changes
    writer: Heartbeat | None = None


class FakeCluster:
    """``hosts * gpus_per_host * workers_per_gpu`` workers serving ``models`` model ids each."""

    def __init__(
        self,
        hosts: int = 2,
        gpus_per_host: int = 4,
        workers_per_gpu: int = 4,
        models: int = 5,
        kernels: int = 100,
        interval_s: float = 5.0,
        seed: int = 0,
        kernels_change: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.started_at = time.time() - 3600.0  # every worker's process start
        self.interval_s = interval_s
        self.ttl = keys.heartbeat_ttl(interval_s)
        self.kernels_change = kernels_change
        self.model_ids = [f"bench_model_{i}" for i in range(models)]
        pool = kernel_names(kernels * 3 // 2, seed)
        picks = {m: self.rng.sample(pool, min(kernels, len(pool))) for m in self.model_ids}
        self.workers: list[FakeWorker] = []
        for h in range(hosts):
            host = f"gpu-host-{h}"
            for g in range(gpus_per_host):
                uuid = f"GPU-{h:02d}{g:02d}a1b2-c3d4-e5f6-0718-293a4b5c6d7e"
                for i in range(workers_per_gpu):
                    worker = FakeWorker(
                        f"gpu{g}-{i + 1}@{host}", host, g, uuid, 1000 + len(self.workers)
                    )
                    for m in self.model_ids:
                        scale = self.rng.uniform(0.5, 2.0)
                        worker.models[m] = _Model(m, ModelStats(), picks[m], scale)
                    self.workers.append(worker)
        for worker in self.workers:
            self.advance(worker, frames=200)

    # ------------------------------------------------------------ what a worker does
    def advance(self, worker: FakeWorker, frames: int = 40) -> None:
        """Run ``frames`` more frames (in batches of up to 8) through each of the worker's models."""
        rng = self.rng
        for m in worker.models.values():
            done = 0
            while done < frames:
                size = min(frames - done, rng.choice((1, 2, 4, 8, 8, 8)))
                m.stats.record_batch(size)
                results = []
                for _ in range(size):
                    timings = {s: rng.lognormvariate(0, 0.5) * ms for s, ms in STAGE_MS.items()}
                    timings["total"] = sum(timings.values())
                    failed = rng.random() < 0.002
                    results.append({"status": "error" if failed else "ok", "timings_ms": timings})
                    m.stats.record_frame_size(int(rng.gauss(60_000, 8_000)))
                    m.errors += failed
                m.stats.record_results(results)
                m.inferences += size
                done += size
            if self.kernels_change:
                m.kernel_scale *= 1.0 + frames / 10_000
                worker.kernel_version += 1

    def heartbeat(self, worker: FakeWorker, now: float | None = None) -> dict[str, Any]:
        """The document ``workers.snapshot.build_snapshot`` would return for ``worker``."""
        now = time.time() if now is None else now
        identity = {"index": 0, "uuid": worker.uuid, "name": "NVIDIA H100 80GB HBM3",
                    "total_memory_mb": 81559.0}  # fmt: skip
        allocations: list[dict[str, Any]] = [
            {
                "model_id": m,
                "version": "1.2.0",
                "device": "cuda:0",
                "estimated_mb": 700.0,
                "measured_mb": 655.4 + i,
                "loaded_at": self.started_at,
            }
            for i, m in enumerate(worker.models)
        ]
        models: dict[str, Any] = {}
        totals = {"frames": 0, "ok": 0, "errors": 0, "expired": 0, "batches": 0}
        for i, (model_id, m) in enumerate(worker.models.items()):
            stats = m.stats.snapshot()
            for k in totals:
                totals[k] += stats[k]
            models[model_id] = {
                "model_id": model_id,
                "state": "ready",
                "reason": None,
                "error_rate": m.errors / m.inferences if m.inferences else 0.0,
                "window_frames": min(m.inferences, 200),
                "inferences": m.inferences,
                "errors": m.errors,
                "since": self.started_at,
                "version": "1.2.0",
                "device": "cuda:0",
                "queue": keys.queue_name(model_id),
                "estimated_mb": 700.0,
                "measured_mb": 655.4 + i,
                "max_batch_size": 8,
                "batch_cap": {"limit": 8, "current": 8, "ooms": 0, "last_oom_at": None},
                "in_flight": self.rng.randint(0, 16),
                "stats": wire_stats(stats),
                "profiler": {
                    "profiled_batches": 10,
                    "skipped_batches": 0,
                    "pending_on_demand": 0,
                    "every_n": 0,
                    "overhead_ms_avg": 2.1,
                    "fold_ms_avg": 13.5,
                },
            }
        worker.beats += 1
        return {
            "worker": worker.name,
            "hostname": worker.hostname,
            "pid": worker.pid,
            "runtime_id": "framepool-bench",
            "state": "ready",
            "device": "cuda:0",
            "gpu": identity,
            "gpus": [identity],
            "started_at": self.started_at,
            "updated_at": now,
            "heartbeat_interval_s": self.interval_s,
            "nvml": {"available": True, "reason": None, "gpus": [self._reading(worker)]},
            "gpu_manager": {
                "status": "available",
                "device_count": 1,
                "devices": [
                    {
                        "index": 0,
                        "total_mb": 81559.0,
                        "free_mb": 50000.0,
                        "allocated_mb": 3300.0,
                        "reserve_mb": 1024,
                    }
                ],
                "allocations": allocations,
                "total_allocated_mb": round(sum(a["measured_mb"] for a in allocations), 1),
            },
            "models": models,
            "totals": totals,
            "kernels": KernelIndex(
                f"{worker.pid}-{self.started_at:.6f}-{worker.kernel_version}",
                {m: len(model.kernel_names) for m, model in worker.models.items()},
                lambda: {m: _kernel_rows(model) for m, model in worker.models.items()},
            ),
        }

    def _reading(self, worker: FakeWorker) -> dict[str, Any]:
        rng = self.rng
        return {
            "index": worker.gpu_index,
            "uuid": worker.uuid,
            "name": "NVIDIA H100 80GB HBM3",
            "utilization_percent": float(rng.randint(40, 85)),
            "memory_used_mb": round(rng.uniform(20_000, 40_000), 1),
            "memory_total_mb": 81559.0,
            "temperature_c": float(rng.randint(50, 70)),
            "power_w": round(rng.uniform(250, 450), 1),
            "sm_clock_mhz": 1980.0,
            "mem_clock_mhz": 2619.0,
            "process_memory_mb": round(rng.uniform(3000, 4000), 1),
        }

    # ------------------------------------------------------------------- Redis
    def publish(self, client: redis.Redis, worker: FakeWorker) -> int:
        """Write ``worker``'s heartbeat with the workers' writer; returns the bytes written
        (the heartbeat, plus its kernel tables when their stamp moved)."""
        writer = worker.writer
        if writer is None or writer.client is not client:
            writer = Heartbeat(client, worker.name, self.interval_s, lambda: self.heartbeat(worker))
            worker.writer = writer
        tables = writer.kernel_writes
        if not writer.write():
            raise RuntimeError(f"heartbeat of {worker.name} not written")
        return writer.size + (writer.kernels_size if writer.kernel_writes > tables else 0)

    def publish_all(self, client: redis.Redis) -> int:
        """Every worker's heartbeat and the served-model set; the bytes written."""
        client.sadd(keys.SERVED_MODELS, *self.model_ids)
        return sum(self.publish(client, w) for w in self.workers)


def _kernel_rows(m: _Model) -> list[dict[str, Any]]:
    """``KernelTable.top()`` rows: heaviest first, floats as the table computes them."""
    rows: list[dict[str, Any]] = []
    for rank, (name, device_type) in enumerate(m.kernel_names):
        calls = 10 * (rank % 7 + 1) * 53
        total = m.kernel_scale * 900.0 / (rank + 1) * (1.7 if device_type == "cuda" else 0.4)
        rows.append(
            {
                "name": name,
                "device_type": device_type,
                "total_calls": calls,
                "avg_time_ms": total / calls,
                "total_time_ms": total,
                "avg_memory_mb": (rank % 5) * 3.137 / 7,
                "last_execution": "2026-11-22T18:00:00Z",
            }
        )
    rows.sort(key=lambda d: d["total_time_ms"], reverse=True)
    return rows
