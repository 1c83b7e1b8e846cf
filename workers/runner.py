"""One thread per model: forms batches with the batching policy, runs the model,
and hands each frame its own result.

Frames arrive already decoded and preprocessed (in the Celery task's thread),
so decode of the next frames overlaps the model's forward pass.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from framepool.errors import ModelError
from framepool.log import get_logger
from framepool.schemas import Status
from models.base import Model
from workers.batching import STOP, Batch, collect_batch
from workers.results import FrameRecord, Origin, build_result

log = get_logger(__name__)

Finish = Callable[[list[dict[str, Any]]], None]


@dataclass(slots=True)
class FrameJob:
    """A frame handed to the runner, with the future its task thread waits on."""

    record: FrameRecord
    input: np.ndarray
    size: tuple[int, int]  # original (width, height)
    submitted_at: float = field(default_factory=time.monotonic)
    future: Future[dict[str, Any]] = field(default_factory=Future)

    @property
    def deadline_at(self) -> float | None:
        return self.record.deadline_at


class ModelRunner:
    """Runs one model on its device in a thread of its own."""

    def __init__(
        self,
        model: Model,
        origin: Origin,
        *,
        max_batch_size: int,
        timeout_s: float,
        finish: Finish,
        incoming: Callable[[], int] = lambda: 0,
    ) -> None:
        self.model = model
        self.origin = origin
        self.max_batch_size = min(max_batch_size, model.manifest.max_batch_size)
        self.timeout_s = timeout_s
        self.finish = finish
        self.incoming = incoming
        self.in_flight = 0  # submitted and not yet resolved
        self._lock = threading.Lock()
        self._q: queue.Queue[FrameJob | object] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"runner-{model.id}", daemon=True)
        self.batches = 0
        self.batch_sizes: dict[int, int] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._q.put(STOP)
        self._thread.join(timeout)

    def submit(self, job: FrameJob) -> Future[dict[str, Any]]:
        with self._lock:
            self.in_flight += 1
        self._q.put(job)
        return job.future

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while True:
            batch: Batch[FrameJob] | None = collect_batch(
                self._q,
                max_batch_size=self.max_batch_size,
                timeout_s=self.timeout_s,
                incoming=self.incoming,
            )
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception:  # never let one batch kill the loop
                log.exception("runner_loop_error", model_id=self.model.id)

    def _run(self, batch: Batch[FrameJob]) -> None:
        done: list[tuple[FrameJob, dict[str, Any]]] = []
        for job in batch.expired:
            job.record.timings["batch_wait"] = (time.monotonic() - job.submitted_at) * 1000.0
            done.append(
                (
                    job,
                    build_result(
                        job.record,
                        self.origin,
                        Status.expired,
                        error=("DeadlineExceeded", "deadline passed before the batch ran"),
                    ),
                )
            )
        if batch.items:
            done.extend(self._infer(batch.items))
            self.batches += 1
            n = len(batch.items)
            self.batch_sizes[n] = self.batch_sizes.get(n, 0) + 1
        try:
            self.finish([r for _, r in done])
        finally:
            for job, result in done:
                job.future.set_result(result)
            with self._lock:
                self.in_flight -= len(done)

    def _infer(self, jobs: list[FrameJob]) -> list[tuple[FrameJob, dict[str, Any]]]:
        """Run ``jobs`` as one batch; on failure split it so one bad frame fails alone."""
        start = time.monotonic()
        try:
            x = torch.from_numpy(np.stack([j.input for j in jobs]))
            x = x.to(self.model.device, non_blocking=True)
            with torch.inference_mode():
                raw = self.model.infer(x)
                if self.model.device.type == "cuda":
                    torch.cuda.synchronize(self.model.device)
                t_inf = time.monotonic()
                outputs = self.model.postprocess(raw, [j.size for j in jobs])
            t_post = time.monotonic()
            if len(outputs) != len(jobs):
                raise ModelError(
                    f"{self.model.id} returned {len(outputs)} outputs for {len(jobs)} frames"
                )
        except Exception as exc:
            if len(jobs) > 1:
                log.warning(
                    "batch_failed_splitting",
                    model_id=self.model.id,
                    batch_size=len(jobs),
                    error=f"{type(exc).__name__}: {exc}",
                )
                half = len(jobs) // 2
                return self._infer(jobs[:half]) + self._infer(jobs[half:])
            log.error(
                "frame_model_error",
                model_id=self.model.id,
                correlation_id=jobs[0].record.correlation_id,
                error=str(exc),
            )
            return [
                (
                    jobs[0],
                    build_result(
                        jobs[0].record, self.origin, Status.error, error=exc, batch_size=1
                    ),
                )
            ]
        n = len(jobs)
        per_inf = (t_inf - start) * 1000.0
        per_post = (t_post - t_inf) * 1000.0
        out = []
        for job, o in zip(jobs, outputs, strict=True):
            t = job.record.timings
            t["batch_wait"] = (start - job.submitted_at) * 1000.0
            t["inference"] = per_inf
            t["postprocess"] = per_post
            out.append(
                (job, build_result(job.record, self.origin, Status.ok, outputs=o, batch_size=n))
            )
        return out
