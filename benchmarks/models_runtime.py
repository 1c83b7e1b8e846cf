"""``framepool bench models``, the runtime's costs: the profiler's, and OOM recovery.

:func:`profiler_cost` runs one batch (host-to-device copy, ``infer``,
``postprocess``) plain and under ``BatchProfiler.profile``, alternately.

:func:`oom_recovery` (CUDA only): :class:`MemoryHog` allocates a slice of CUDA
memory per frame of its batch, sized from ``torch.cuda.mem_get_info`` so that
batches of up to :data:`OOM_FITS` frames fit and larger ones raise a genuine
``torch.cuda.OutOfMemoryError`` from the caching allocator. A runner capped at
:data:`OOM_MAX_BATCH` gets 4x that many frames at once: it must answer every
one ``ok``, splitting and lowering its batch cap as it goes.
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import wait
from typing import Any

import numpy as np
import torch

from benchmarks.harness import median, ratio
from benchmarks.pipeline import CpuMeter
from framepool.manifest import ModelManifest
from framepool.schemas import FrameMeta
from models.base import Model
from workers.profiling import BatchProfiler
from workers.results import FrameRecord, Origin
from workers.runner import FrameJob, ModelRunner

PROFILE_BATCH = 8
OOM_MAX_BATCH = 32  # the runner's cap; 4x this many frames are submitted
OOM_FITS = 12  # MemoryHog batches of up to this many frames fit in free memory
MB = 1024.0 * 1024.0


def round_or_none(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profiler_cost(model: Model, repeats: int) -> dict[str, Any]:
    """One batch run plain and under ``BatchProfiler.profile``, alternately."""
    from producer.sources.synthetic import SyntheticCamera

    dev = model.device
    cam = SyntheticCamera("bench", width=640, height=480, fps=10.0, seed=0)
    host = torch.from_numpy(
        np.stack([model.preprocess(cam.frame(i).image) for i in range(PROFILE_BATCH)])
    )
    if dev.type == "cuda":
        host = host.pin_memory()
    sizes = [(640, 480)] * PROFILE_BATCH

    def batch() -> None:  # what the runner does per batch, less np.stack
        with torch.inference_mode():
            model.postprocess(model.infer(model.to_device(host)), sizes)
        sync(dev)

    prof = BatchProfiler(every_n=0)
    warm_up_ms = prof.warm_up(dev.type)  # torch's first profiler session, paid once
    batch()
    plain: list[float] = []
    profiled: list[float] = []
    meter = CpuMeter({})
    for _ in range(repeats):
        t0 = time.perf_counter()
        batch()
        plain.append((time.perf_counter() - t0) * 1000.0)
        prof.record_batch_ms(plain[-1])
        t0 = time.perf_counter()
        with prof.profile(dev.type):
            batch()
        profiled.append((time.perf_counter() - t0) * 1000.0)
    stats, rows = prof.stats(), prof.table.snapshot()
    others = meter.per_frame_ms(1)["others_cpus"]
    return {
        "batch": PROFILE_BATCH,
        "plain_ms": round(median(plain), 3),
        "profiled_ms": round(median(profiled), 3),
        "ratio": round(ratio(median(profiled), median(plain)), 3),
        "fold_ms": round_or_none(stats["fold_ms_avg"], 3),
        "profiler_overhead_ms": round_or_none(stats["overhead_ms_avg"], 3),
        "warm_up_ms": round_or_none(warm_up_ms, 1),
        "profiled_batches": stats["profiled_batches"],
        "skipped_batches": stats["skipped_batches"],
        "kernel_rows": {t: sum(r["device_type"] == t for r in rows) for t in ("cpu", "cuda")},
        "others_cpus": others,
        "plain_ms_repeats": [round(v, 3) for v in plain],
        "profiled_ms_repeats": [round(v, 3) for v in profiled],
    }


# ------------------------------------------------------------------ OOM recovery
class MemoryHog(Model):
    """Allocates ``per_frame`` bytes of CUDA memory per frame of its batch."""

    def __init__(self, device: str, per_frame: int, max_batch: int = OOM_MAX_BATCH) -> None:
        manifest = ModelManifest(
            id="memory_hog",
            version="1",
            entrypoint="model:MemoryHog",
            input_size=(1, 1),
            max_batch_size=max_batch,
        )
        super().__init__(manifest, device)
        self.per_frame = per_frame
        self.calls: list[tuple[float, int, bool]] = []  # (when, batch size, fitted)

    def load(self) -> None: ...

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32)

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        n = int(batch.shape[0])
        try:
            buf = torch.empty(n * self.per_frame, dtype=torch.uint8, device=self.device)
        except torch.cuda.OutOfMemoryError:
            self.calls.append((time.perf_counter(), n, False))
            raise
        buf[:: 1 << 20].fill_(1)  # touch one byte per MiB
        self.calls.append((time.perf_counter(), n, True))
        return batch.reshape(n, -1)[:, 0] + buf[0].float()

    def postprocess(self, raw: Any, sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        return [{"value": float(v)} for v in raw.tolist()]


def oom_recovery(device: str) -> dict[str, Any]:
    """4 x max batch frames through a runner whose model OOMs above ``OOM_FITS`` frames."""
    if not device.startswith("cuda"):
        return {"skipped": "needs CUDA: a real torch.cuda.OutOfMemoryError"}
    gc.collect()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    hog = MemoryHog(device, int(free / (OOM_FITS + 0.5)))
    delivered: list[tuple[float, int]] = []  # (when, ok results) per finished batch

    def finish(done: list[tuple[Any, dict[str, Any]]]) -> None:
        delivered.append((time.perf_counter(), sum(r["status"] == "ok" for _, r in done)))

    runner = ModelRunner(
        hog,
        Origin("bench", device, "1"),
        max_batch_size=OOM_MAX_BATCH,
        timeout_s=0.0,
        finish=finish,
    )
    frames = 4 * OOM_MAX_BATCH
    now = time.time()
    jobs = [
        FrameJob(
            FrameRecord(
                f"j{i}",
                f"c{i}",
                FrameMeta(
                    model_id=hog.id,
                    camera_id="bench",
                    seq=i,
                    captured_at=now,
                    enqueued_at=now,
                    deadline_at=None,
                    format="png",
                    width=1,
                    height=1,
                ),
            ),
            np.zeros((1, 1, 1), np.float32),
            (1, 1),
        )
        for i in range(frames)
    ]
    for job in jobs:  # all queued before the runner starts: its first batch is full
        runner.submit(job)
    t0 = time.perf_counter()
    runner.start()
    done, _ = wait([j.future for j in jobs], timeout=300)
    total_s = time.perf_counter() - t0
    runner.stop()
    results = [j.future.result() for j in jobs if j.future in done]
    calls, cap, splits = list(hog.calls), runner.cap.snapshot(), runner.stats.oom_splits
    first_oom = next((t for t, _, fitted in calls if not fitted), None)
    first_ok = next((t for t, ok in delivered if ok), None)
    del hog, runner, jobs
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "free_mb": round(free / MB, 1),
        "per_frame_mb": round(free / (OOM_FITS + 0.5) / MB, 1),
        "fits_up_to": OOM_FITS,
        "max_batch": OOM_MAX_BATCH,
        "frames": frames,
        "answered": len(results),
        "ok": sum(r["status"] == "ok" for r in results),
        "all_ok": len(results) == frames and all(r["status"] == "ok" for r in results),
        "oom_splits": splits,
        "ooms": cap["ooms"],
        "cap_after": cap["current"],
        "cap_limit": cap["limit"],
        "batches_tried": [n if fitted else f"{n} OOM" for _, n, fitted in calls],
        "recover_s": None
        if first_oom is None or first_ok is None
        else round(first_ok - first_oom, 4),
        "total_s": round(total_s, 3),
    }
