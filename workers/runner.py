"""One thread per model: forms batches with the batching policy, runs the model,
and hands each frame its own result.

Frames arrive already decoded and preprocessed (in the frame pool's threads),
so decode of the next frames overlaps the model's forward pass; when the model
has nothing to do, the runner decodes the frame itself (:meth:`ModelRunner.run_here`),
and its batch starts without a hand-off between threads. A batch's
results are written out by a second thread (``results-<model>``), in batch
order, while the next batch runs. When no frame waits for the next batch and no
write is pending, the runner writes the batch itself: a lone frame's result
then goes out without a hand-off between threads. The batch itself is run, timed and split on
failure by :class:`~workers.inference.BatchInference` (``workers/inference.py``).

What can go wrong in a batch, and what is done:

- out of memory: the batch is split in halves and retried, the model's batch
  cap shrinks (and grows back after a run of good batches); a single frame that
  still does not fit gets an ``error`` result;
- any other exception: the batch is split so one bad frame fails alone;
- a sticky CUDA error (illegal access, lost device): the CUDA context is gone,
  so nothing is answered: every waiting frame fails with ``DeviceLost`` and
  ``on_fatal`` tells the runtime to stop the process, so the frames are
  redelivered to a healthy worker.
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

from framepool.errors import BadFrame, DeviceLost, ResultNotStored
from framepool.log import get_logger
from framepool.schemas import Status
from models.base import Model
from workers.batching import STOP, Batch, Chore, collect_batch
from workers.inference import BatchInference
from workers.lifecycle import ModelHealth
from workers.oom import BatchCap
from workers.profiling import BatchProfiler
from workers.results import FrameRecord, Origin, build_result
from workers.stats import ModelStats

log = get_logger(__name__)

# each finished frame's record (its meta: camera, callback_url, ...) with its result
Finish = Callable[[list[tuple[FrameRecord, dict[str, Any]]]], None]
Done = list[tuple["FrameJob", dict[str, Any]]]
# job ids of the batch's frames that a newer frame of their camera has superseded
Screen = Callable[[list["FrameJob"]], set[str]]


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
        health: ModelHealth | None = None,
        profiler: BatchProfiler | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        screen: Screen | None = None,
        attempt: Callable[[FrameJob], str | None] | None = None,
        survived: Callable[[FrameJob], None] | None = None,
        slow_batch_s: float = float("inf"),
    ) -> None:
        self.model = model
        self.origin = origin
        self.cap = BatchCap(min(max_batch_size, model.manifest.max_batch_size))
        self.timeout_s = timeout_s
        self.finish = finish
        self.incoming = incoming
        self.health = health
        self.profiler = profiler
        self.on_fatal = on_fatal
        self.screen = screen
        self.attempt = attempt
        self.survived = survived
        # a batch this long is close to the visibility timeout: its frames may be
        # delivered again while it runs (written once, but executed twice)
        self.slow_batch_s = slow_batch_s
        self.stats = ModelStats()
        self._inference = BatchInference(model, origin, self.cap, self.stats, profiler)
        self.fatal: BaseException | None = None
        self.draining: BaseException | None = None  # set by drain(): refuse new frames
        self.in_flight = 0  # submitted and not yet resolved
        self._chore_queued = False  # a frame's intake handed to this thread (run_here)
        self._lock = threading.Lock()
        self._q: queue.Queue[FrameJob | object] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"runner-{model.id}", daemon=True)
        # finished batches, written out (in order) by the results thread
        self._finished: queue.Queue[tuple[Done, int] | object] = queue.Queue()
        self._writer = threading.Thread(
            target=self._write_loop, name=f"results-{model.id}", daemon=True
        )

    @property
    def max_batch_size(self) -> int:
        return self.cap.limit

    def start(self) -> None:
        if self.profiler is not None and self.profiler.every_n > 0:
            # torch's profiler costs ~1 s the first time in a process; pay it now
            self.profiler.warm_up(self.model.device.type)
        self._writer.start()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop after what is queued, and write out every finished batch."""
        self._q.put(STOP)
        self._thread.join(timeout)
        self._finished.put(STOP)
        self._writer.join(timeout)

    def submit(self, job: FrameJob) -> Future[dict[str, Any]]:
        with self._lock:
            if self.fatal is not None:
                job.future.set_exception(DeviceLost(str(self.fatal)))
                return job.future
            if self.draining is not None:
                job.future.set_exception(self.draining)
                return job.future
            self.in_flight += 1
        self._q.put(job)
        return job.future

    def run_here(self, intake: Callable[[], object]) -> bool:
        """Run a frame's ``intake`` on the runner's own thread when the model has nothing
        to do (no frame queued, in a batch or being written): its batch then starts
        without a hand-off between threads, as a direct call's would. False when busy
        (the caller runs it in a thread of its own, so it overlaps the batch)."""
        with self._lock:
            if (self.in_flight or self._chore_queued or self.fatal is not None
                    or self.draining is not None):  # fmt: skip
                return False
            self._chore_queued = True
        self._q.put(Chore(lambda: self._chore(intake)))
        return True

    def _chore(self, intake: Callable[[], object]) -> None:
        try:
            intake()
        except Exception:  # the intake answers its own frame; never end the loop
            log.exception("runner_intake_error", model_id=self.model.id)
        finally:
            with self._lock:
                self._chore_queued = False

    def drain(self, exc: BaseException) -> list[FrameJob]:
        """Stop taking frames (the worker is stopping): every later ``submit`` fails with
        ``exc``, and the frames not yet in a batch are taken out and returned; the caller
        fails their futures (after handing their messages back). The batch being formed
        or run finishes."""
        with self._lock:
            self.draining = exc
        waiting, stop = self._take_waiting()
        if stop:
            self._q.put(STOP)
        with self._lock:
            self.in_flight -= len(waiting)
        return waiting

    def _take_waiting(self) -> tuple[list[FrameJob], bool]:
        """Empty the queue: the frames not yet in a batch, and whether STOP was in it."""
        waiting: list[FrameJob] = []
        stop = False
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return waiting, stop
            if isinstance(item, FrameJob):
                waiting.append(item)
            elif isinstance(item, Chore):  # a frame's intake: it is refused, and says so
                item.fn()
            else:
                stop = True

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while True:
            batch: Batch[FrameJob] | None = collect_batch(
                self._q,
                max_batch_size=self.cap.current,
                timeout_s=self.timeout_s,
                incoming=self.incoming,
            )
            if batch is None:
                return
            try:
                self._run(batch)
            except DeviceLost as exc:
                self._die(batch, exc)
                return
            except Exception:  # never let one batch kill the loop
                log.exception("runner_loop_error", model_id=self.model.id)

    def _die(self, batch: Batch[FrameJob], exc: DeviceLost) -> None:
        """Fail every waiting frame (they will be redelivered) and report the fatal error."""
        log.critical(
            "device_lost", model_id=self.model.id, device=str(self.model.device), error=str(exc)
        )
        with self._lock:
            self.fatal = exc
        pending = [*batch.items, *batch.expired, *self._take_waiting()[0]]
        for job in pending:
            if not job.future.done():
                job.future.set_exception(exc)
        with self._lock:
            self.in_flight -= len(pending)
        if self.health is not None:
            self.health.failed(f"device lost: {exc}")
        if self.on_fatal is not None:
            try:
                self.on_fatal(exc)
            except Exception:
                log.exception("on_fatal_failed", model_id=self.model.id)

    def _run(self, batch: Batch[FrameJob]) -> None:
        done: Done = []
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
        done.extend(self._drop_superseded(batch))
        fresh = [j for j in batch.items if not j.record.redelivered]
        if fresh:
            self.stats.record_batch(len(fresh))
            began = time.monotonic()
            done.extend(self._inference.run(fresh))
            took = time.monotonic() - began
            if took > self.slow_batch_s:
                log.warning("batch_longer_than_half_visibility_timeout", model_id=self.model.id,
                            batch_size=len(fresh), seconds=round(took, 1))  # fmt: skip
        if done:
            if self._q.empty() and not self._finished.unfinished_tasks:
                # nothing waits for the model: written here, without waking the
                # results thread (a frame that comes meanwhile waits for the write)
                self._write(done, len(fresh))
            else:
                self._finished.put((done, len(fresh)))  # written while the next batch runs
        redelivered = [job for job in batch.items if job.record.redelivered]
        if redelivered:
            # each answered (and the batches before it) before the next one runs: if
            # one takes the process down, the others are not blamed with it
            self._finished.join()
            for job in redelivered:
                self._complete(self._run_alone(job), ran=1)

    def _write_loop(self) -> None:
        while True:
            item = self._finished.get()
            try:
                if item is STOP:
                    return
                assert isinstance(item, tuple)
                self._write(*item)
            finally:
                self._finished.task_done()

    def _write(self, done: Done, ran: int) -> None:
        try:
            self._complete(done, ran)
        except Exception:  # never leave a loop: later batches wait on it
            log.exception("result_writer_error", model_id=self.model.id)

    def _complete(self, done: Done, ran: int) -> None:
        """Count ``done``, write the results out (one round trip), then hand each to its
        task thread, which returns and acks: never an ack before the result is stored.
        When the write fails, the task threads get ``ResultNotStored`` (requeue)."""
        if not done:
            return
        results = [r for _, r in done]
        self.stats.record_results(results)
        if self.health is not None and ran:
            errors = sum(1 for r in results if _counts_against_model(r))
            self.health.record(ok=ran - errors, errors=errors)
        failed: BaseException | None = None
        try:
            self.finish([(job.record, result) for job, result in done])
        except ResultNotStored as exc:
            failed = exc
        except Exception as exc:  # a bug in writing must not leave the tasks waiting
            log.exception("result_write_error", model_id=self.model.id)
            failed = ResultNotStored(f"{type(exc).__name__}: {exc}")
        for job, result in done:
            if failed is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(failed)
        with self._lock:
            self.in_flight -= len(done)

    def _drop_superseded(self, batch: Batch[FrameJob]) -> Done:
        """Latest-frame-wins: answer superseded frames ``expired`` instead of running them."""
        if self.screen is None or not batch.items:
            return []
        gone = self.screen(batch.items)
        if not gone:
            return []
        done: Done = []
        live = []
        for job in batch.items:
            if job.record.job_id not in gone:
                live.append(job)
                continue
            job.record.timings["batch_wait"] = (time.monotonic() - job.submitted_at) * 1000.0
            cam = job.record.meta.get("camera_id")
            why = ("Superseded", f"a newer frame of camera {cam!r} was queued")
            done.append((job, build_result(job.record, self.origin, Status.expired, error=why)))
        batch.items = live
        return done

    def _run_alone(self, job: FrameJob) -> Done:
        """A redelivered frame may be what killed its last worker: it runs in a batch
        of its own, so it cannot take others down with it, and only after its attempt
        is counted; a frame over ``MAX_FRAME_ATTEMPTS`` is refused (dead-lettered).
        The count is of solo runs that never finished: one that finishes clears it."""
        refused = self.attempt(job) if self.attempt is not None else None
        if refused is not None:
            error = ("PoisonFrame", refused)
            return [(job, build_result(job.record, self.origin, Status.error, error=error))]
        self.stats.record_batch(1)
        out = self._inference.run([job])
        if self.survived is not None:  # it did not take the process down
            self.survived(job)
        return out


def _counts_against_model(result: dict[str, Any]) -> bool:
    """An error result that says the model is failing: not a frame it could not decode."""
    if result["status"] != Status.error.value:
        return False
    return (result.get("error") or {}).get("type") != BadFrame.__name__
