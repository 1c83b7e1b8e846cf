"""One batch through its model: collate, host to device, infer, postprocess, each frame's result.

:class:`BatchInference` runs the batches a :class:`~workers.runner.ModelRunner`
forms (under the profiler when it is a batch's turn) and times the stages:
host→device and inference with CUDA events on a GPU, ``perf_counter`` on the
CPU (:class:`_StageClock`). When the batch fails:

- out of memory: it is split in halves and retried, and the model's batch cap
  shrinks (:class:`~workers.oom.BatchCap`); a single frame that still does not
  fit gets an ``error`` result (``GpuOutOfMemory``);
- any other exception: it is split so one bad frame fails alone;
- a sticky CUDA error: ``DeviceLost`` is raised for the runner, which fails
  every waiting frame and stops the worker.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from framepool.errors import BadFrame, DeviceLost, GpuOutOfMemory, ModelError
from framepool.log import get_logger
from framepool.schemas import Status
from models.base import Model
from workers.oom import BatchCap, is_oom, is_sticky_cuda_error
from workers.profiling import BatchProfiler
from workers.results import Origin, build_result
from workers.stats import ModelStats

if TYPE_CHECKING:
    from workers.runner import Done, FrameJob

log = get_logger(__name__)


class _StageClock:
    """Host→device and inference times: CUDA events on a GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._marks.append(ev)
        else:
            self._marks.append(time.perf_counter())

    def spans_ms(self) -> list[float]:
        """Milliseconds between consecutive marks (synchronises the GPU first)."""
        m = self._marks
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [float(a.elapsed_time(b)) for a, b in zip(m, m[1:], strict=False)]
        return [(b - a) * 1000.0 for a, b in zip(m, m[1:], strict=False)]


class BatchInference:
    """Runs one model's batches; the batch cap, stats and profiler are its runner's."""

    def __init__(
        self,
        model: Model,
        origin: Origin,
        cap: BatchCap,
        stats: ModelStats,
        profiler: BatchProfiler | None = None,
    ) -> None:
        self.model = model
        self.origin = origin
        self.cap = cap
        self.stats = stats
        self.profiler = profiler

    def run(self, jobs: list[FrameJob]) -> Done:
        """One batch from the queue, under the profiler when it is this batch's turn."""
        prof = self.profiler
        if prof is not None and prof.should_profile():
            with prof.profile(self.model.device.type):
                return self._infer(jobs)
        started = time.perf_counter()
        out = self._infer(jobs)
        if prof is not None:
            prof.record_batch_ms((time.perf_counter() - started) * 1000.0)
        return out

    def _infer(self, jobs: list[FrameJob]) -> Done:
        """Run ``jobs`` as one batch; on failure split it so one bad frame fails alone."""
        start = time.monotonic()
        clock = _StageClock(self.model.device)
        try:
            x = self.model.collate([j.input for j in jobs])
            if clock.cuda and isinstance(x, torch.Tensor):
                x = x.pin_memory()
            with torch.inference_mode():
                clock.mark()
                x = self.model.to_device(x)
                clock.mark()
                raw = self.model.infer(x)
                clock.mark()
                h2d_ms, inf_ms = clock.spans_ms()
                t_post = time.perf_counter()
                outputs = self.model.postprocess(raw, [j.size for j in jobs])
                post_ms = (time.perf_counter() - t_post) * 1000.0
            if len(outputs) != len(jobs):
                raise ModelError(
                    f"{self.model.id} returned {len(outputs)} outputs for {len(jobs)} frames"
                )
        except Exception as exc:
            return self._on_error(jobs, exc)
        n = len(jobs)
        self.cap.on_success(n)
        out = []
        for job, o in zip(jobs, outputs, strict=True):
            t = job.record.timings
            t["batch_wait"] = (start - job.submitted_at) * 1000.0
            t["host_to_device"] = h2d_ms
            t["inference"] = inf_ms
            t["postprocess"] = post_ms
            out.append(
                (job, build_result(job.record, self.origin, Status.ok, outputs=o, batch_size=n))
            )
        return out

    def _on_error(self, jobs: list[FrameJob], exc: Exception) -> Done:
        if is_sticky_cuda_error(exc):
            raise DeviceLost(f"{type(exc).__name__}: {exc}") from exc
        oom = is_oom(exc)
        if oom:
            cap = self.cap.on_oom(len(jobs))
            self.stats.record_oom_split()
            if self.model.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("batch_oom", model_id=self.model.id, batch_size=len(jobs), batch_cap=cap)
        if len(jobs) > 1:
            if not oom:
                log.warning(
                    "batch_failed_splitting",
                    model_id=self.model.id,
                    batch_size=len(jobs),
                    error=f"{type(exc).__name__}: {exc}",
                )
            half = len(jobs) // 2
            return self._infer(jobs[:half]) + self._infer(jobs[half:])
        job = jobs[0]
        error: BaseException = GpuOutOfMemory(str(exc)) if oom else exc
        if isinstance(exc, BadFrame):  # decoded on the device: the frame's fault
            log.warning("frame_decode_failed", correlation_id=job.record.correlation_id,
                        error=str(exc))  # fmt: skip
            return [
                (job, build_result(job.record, self.origin, Status.error, error=exc, batch_size=1))
            ]
        log.error(
            "frame_model_error",
            model_id=self.model.id,
            correlation_id=job.record.correlation_id,
            error=f"{type(error).__name__}: {error}",
        )
        return [
            (job, build_result(job.record, self.origin, Status.error, error=error, batch_size=1))
        ]
