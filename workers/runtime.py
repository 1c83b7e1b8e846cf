"""The worker's runtime: its models, their runners, and the per-frame path.

``handle`` runs in the Celery task's own thread: it binds the frame's ids to
the log context, has :class:`~workers.intake.FrameIntake` (``workers/intake.py``)
check the deadline, decode and preprocess the frame, then waits for the model
runner to include it in a batch.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import redis

from framepool import deadletters, keys
from framepool.errors import BadInput, DeviceLost, WorkerStopping
from framepool.log import bind_frame, get_logger
from framepool.nvml import GpuSampler
from framepool.settings import Settings
from workers.callbacks import CallbackDispatcher
from workers.gpu_manager import GPUManager
from workers.intake import FrameIntake
from workers.lifecycle import ModelState
from workers.loading import ModelSlot, load_models
from workers.profiling import BatchProfiler
from workers.results import FrameRecord, Origin, ResultWriter
from workers.runner import FrameJob, ModelRunner
from workers.snapshot import build_snapshot

log = get_logger(__name__)
_stdlib_log = logging.getLogger(__name__)  # its level, read per frame


class WorkerRuntime:
    """A worker's models (loaded or failed), their runners, and its heartbeat snapshot."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        device: str,
        slots: Iterable[ModelSlot],
        client: redis.Redis,
        incoming: Callable[[], int] = lambda: 0,
        gpu: GPUManager | None = None,
        sampler: GpuSampler | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.device = device
        self.client = client
        self.gpu = gpu or GPUManager(False, settings.gpu_memory_reserve_mb, True)
        self.sampler = sampler
        self.results = ResultWriter(
            client, settings.result_stream_maxlen, settings.result_ttl_seconds
        )
        self.callbacks = CallbackDispatcher(settings)
        self.slots = {s.model_id: s for s in slots}
        self.runners: dict[str, ModelRunner] = {}
        self.fatal: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.state = "starting"
        self.started_at = time.time()
        self._incoming = incoming
        for slot in self.slots.values():
            if slot.model is None:
                continue
            model = slot.model
            origin = Origin(worker=name, device=str(model.device), model_version=model.version)
            self.runners[model.id] = ModelRunner(
                model,
                origin,
                max_batch_size=settings.max_batch_size,
                timeout_s=settings.batch_timeout_s,
                finish=self._deliver,
                incoming=self.incoming,
                health=slot.health,
                profiler=BatchProfiler(settings.profile_every_n_batches),
                on_fatal=self._fatal,
                screen=self._superseded,
                attempt=self._attempt,
                survived=self._survived,
                slow_batch_s=settings.visibility_timeout_seconds / 2,
            )
        self.origin = Origin(worker=name, device=device)
        self.intake = FrameIntake(settings, name, client, self.runners, self.origin, self._deliver)

    @classmethod
    def load(
        cls,
        settings: Settings,
        name: str,
        device: str,
        model_ids: Iterable[str],
        client: redis.Redis,
        incoming: Callable[[], int] = lambda: 0,
        sampler: GpuSampler | None = None,
    ) -> WorkerRuntime:
        """The seed's startup flow: GPU manager, then place, load and warm each model."""
        gpu = GPUManager(
            settings.enable_gpu and device != "cpu",
            settings.gpu_memory_reserve_mb,
            settings.gpu_fallback_to_cpu,
        )
        slots = load_models(settings, model_ids, gpu, on_change=_log_health_change)
        return cls(settings, name, device, slots, client, incoming, gpu, sampler)

    @property
    def ready_models(self) -> list[str]:
        return list(self.runners)

    def incoming(self) -> int:
        """Frames received by this worker but not yet handed to a runner."""
        return self._incoming() - sum(r.in_flight for r in self.runners.values())

    def start(self) -> None:
        for runner in self.runners.values():
            runner.start()
        if not self.runners:
            return
        try:
            self.client.sadd(keys.SERVED_MODELS, *self.runners)
        except redis.RedisError as exc:
            log.warning("served_models_register_failed", error=str(exc))

    def stop(self) -> None:
        self.state = "stopping"
        for runner in self.runners.values():
            runner.stop()

    def drain(self, hand_back: Callable[[list[str]], None] | None = None) -> int:
        """Stop taking frames (SIGTERM): the frames not yet in a batch go back to their
        queues at once, the batches running now finish. ``hand_back`` gets their job ids
        first (the worker rejects their messages with requeue); then their tasks end with
        :class:`WorkerStopping`. Returns how many went back. (kombu marks them
        redelivered: the next worker runs each alone once, ``_attempt``.)"""
        if self.fatal is None:  # a lost device keeps saying so
            self.state = "draining"
        why = WorkerStopping(f"worker {self.name} is stopping: frame handed back to its queue")
        handed = [job for runner in self.runners.values() for job in runner.drain(why)]
        try:
            if handed and hand_back is not None:
                hand_back([job.record.job_id for job in handed])
        finally:
            for job in handed:
                job.future.set_exception(why)
        return len(handed)

    def profile(self, batches: int, model_id: str | None = None) -> dict[str, int]:
        """Profile the next ``batches`` batches of one model (or of each); pending per model."""
        if model_id is not None and model_id not in self.runners:
            raise BadInput(f"model {model_id!r} is not served by worker {self.name}")
        targets = [model_id] if model_id else list(self.runners)
        pending: dict[str, int] = {}
        for m in targets:
            profiler = self.runners[m].profiler
            if profiler is not None:
                pending[m] = profiler.request(batches)
        return pending

    def _fatal(self, exc: BaseException) -> None:
        self.fatal = exc
        self.state = "device_lost"
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def snapshot(self) -> dict[str, Any]:
        """What the heartbeat publishes: who and where, GPU readings, models, counters, and the
        kernel tables' stamp (their rows go to a key of their own, ``workers/heartbeat.py``)."""
        return build_snapshot(self)

    # --------------------------------------------------------------- per frame
    def handle(
        self,
        job_id: str,
        correlation_id: str,
        frame: Any,
        meta: Any,
        redelivered: bool = False,
    ) -> dict[str, Any]:
        """One frame to its written result (the calling thread waits for its batch)."""
        out = self.start_frame(job_id, correlation_id, frame, meta, redelivered)
        result = out if isinstance(out, dict) else out.result()
        frame_done(result)
        return result

    def start_frame(
        self,
        job_id: str,
        correlation_id: str,
        frame: Any,
        meta: Any,
        redelivered: bool = False,
    ) -> dict[str, Any] | Future[dict[str, Any]]:
        """Check, read and decode one frame and hand it to its model's runner: the future
        of its written result; or the result itself when the frame ended early (bad input,
        expired, unserved), written already. The frame's ids are bound to the log lines."""
        camera = meta.get("camera_id") if isinstance(meta, dict) else None
        with bind_frame(correlation_id=correlation_id, camera_id=camera, job_id=job_id):
            if self.fatal is not None:  # the task turns this into a requeue
                raise DeviceLost(f"worker {self.name} lost its device: {self.fatal}")
            return self.intake.take(job_id, correlation_id, frame, meta, redelivered)

    def _superseded(self, jobs: list[FrameJob]) -> set[str]:
        """Job ids among ``jobs`` whose camera has a newer frame queued (latest-frame-wins)."""
        asked: list[tuple[str, str]] = []
        for job in jobs:
            meta = job.record.meta
            if meta.get("latest_wins") and meta.get("camera_id"):
                key = keys.latest_frame(meta["model_id"], str(meta["camera_id"]))
                asked.append((job.record.job_id, key))
        if not asked:
            return set()
        try:
            newest = self.client.mget([key for _, key in asked])
        except redis.RedisError as exc:  # when in doubt, run the frame
            log.warning("latest_frame_check_failed", error=str(exc))
            return set()
        return {
            job_id
            for (job_id, _), latest in zip(asked, newest, strict=True)
            if latest is not None and _text(latest) != job_id
        }

    def already_written(self, job_id: str) -> bool:
        """Whether a result for ``job_id`` has been written (asked of redelivered frames)."""
        try:
            return bool(self.client.exists(keys.result_done(job_id)))
        except redis.RedisError:
            return False

    def count_duplicate(self, model_id: str) -> None:
        try:
            self.client.hincrby(keys.dropped_counter(model_id), "duplicate", 1)
        except redis.RedisError as exc:
            log.warning("drop_count_failed", error=str(exc))

    def _survived(self, job: FrameJob) -> None:
        try:
            self.client.delete(keys.frame_attempts(job.record.job_id))
        except redis.RedisError as exc:
            log.warning("frame_attempt_count_failed", error=str(exc))

    def _attempt(self, job: FrameJob) -> str | None:
        """Count a redelivered frame's solo start (cleared when the run finishes, so the
        count is of runs its worker did not survive); past MAX_FRAME_ATTEMPTS,
        dead-letter it and say why (answered ``error``/``PoisonFrame``, not run)."""
        rec = job.record
        limit = self.settings.max_frame_attempts
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.incr(keys.frame_attempts(rec.job_id))
                pipe.expire(keys.frame_attempts(rec.job_id), self.settings.result_ttl_seconds)
                started = int(pipe.execute()[0])
        except redis.RedisError as exc:  # when in doubt, run it
            log.warning("frame_attempt_count_failed", error=str(exc))
            return None
        if started <= limit:
            log.warning("frame_redelivered_running_alone", attempt=started, limit=limit)
            return None
        reason = (
            f"its worker died {started} times while running it (once in its first batch, "
            f"then {limit} times alone; MAX_FRAME_ATTEMPTS={limit})"
        )
        entry = deadletters.make_entry(
            "frame",
            reason,
            job_id=rec.job_id,
            correlation_id=rec.correlation_id,
            model_id=rec.meta["model_id"],
            camera_id=rec.meta.get("camera_id"),
            attempts=started,
            payload={
                "meta": dict(rec.meta),
                "frame_base64": base64.b64encode(rec.frame or b"").decode(),
            },
        )
        try:
            with self.client.pipeline(transaction=False) as pipe:
                deadletters.add(pipe, entry, self.settings.dead_letter_maxlen)
                pipe.execute()
        except redis.RedisError as exc:
            log.error("dead_letter_write_failed", error=str(exc))
        log.error("frame_dead_lettered", model_id=rec.meta["model_id"], attempts=started)
        return reason

    def _deliver(self, done: list[tuple[FrameRecord, dict[str, Any]]]) -> None:
        """Write the results (Celery's result keys, the camera streams), then the webhooks,
        each once per job_id (a frame executed twice is written and called back once).
        Runs before the tasks return, so no frame is acked before its result is stored;
        raises ``ResultNotStored`` when Redis is away."""
        dups = self.results.write([result for _, result in done])
        self.callbacks.dispatch([d for d in done if d[0].job_id not in dups] if dups else done)


def frame_done(result: dict[str, Any]) -> None:
    """The debug line of an answered frame, with its ids (``correlation_id``,
    ``camera_id``, ``job_id``) bound as every line of the frame has them. Nothing is
    bound when the level is above DEBUG (it runs for every frame)."""
    if not _stdlib_log.isEnabledFor(logging.DEBUG):
        return
    with bind_frame(
        correlation_id=result.get("correlation_id"),
        camera_id=result.get("camera_id"),
        job_id=result.get("job_id"),
    ):
        log.debug(
            "frame_done",
            status=result.get("status"),
            batch_size=result.get("batch_size"),
            total_ms=(result.get("timings_ms") or {}).get("total"),
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _log_health_change(model_id: str, old: ModelState, new: ModelState, reason: str) -> None:
    level = log.info if new in (ModelState.ready, ModelState.loading) else log.warning
    level("model_state_changed", model_id=model_id, old=old.value, new=new.value, reason=reason)
