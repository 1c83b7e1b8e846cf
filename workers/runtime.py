"""The worker's runtime: its models, their runners, and the per-frame path.

``handle`` runs in the Celery task's own thread: it binds the frame's ids to
the log context, checks the deadline, decodes and preprocesses the frame, then
waits for the model runner to include it in a batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from framepool import codec, keys
from framepool.errors import BadFrame, BadInput, DeviceLost
from framepool.log import bind_frame, get_logger
from framepool.nvml import GpuSampler
from framepool.schemas import FrameMeta, Status
from framepool.settings import Settings
from workers.gpu_manager import GPUManager
from workers.lifecycle import ModelState
from workers.loading import ModelSlot, load_models
from workers.profiling import BatchProfiler
from workers.results import FrameRecord, Origin, StreamWriter, build_result
from workers.runner import FrameJob, ModelRunner
from workers.snapshot import build_snapshot

log = get_logger(__name__)

_META_KEYS = ("model_id", "enqueued_at", "format", "width", "height")


def _check_message(frame: Any, meta: Any) -> FrameMeta:
    if not isinstance(meta, dict) or any(k not in meta for k in _META_KEYS):
        raise BadInput(f"malformed frame message: meta must hold {', '.join(_META_KEYS)}")
    if not isinstance(frame, bytes):
        raise BadInput(f"malformed frame message: frame is {type(frame).__name__}, not bytes")
    return meta  # type: ignore[return-value]


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
        self.streams = StreamWriter(client, settings.result_stream_maxlen)
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
            )
        self.origin = Origin(worker=name, device=device)

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
        """What the heartbeat publishes: who and where, GPU readings, models, counters, kernels."""
        return build_snapshot(self)

    # --------------------------------------------------------------- per frame
    def handle(self, job_id: str, correlation_id: str, frame: Any, meta: Any) -> dict[str, Any]:
        camera = meta.get("camera_id") if isinstance(meta, dict) else None
        with bind_frame(correlation_id=correlation_id, camera_id=camera, job_id=job_id):
            result = self._handle(job_id, correlation_id, frame, meta)
            log.debug(
                "frame_done",
                status=result["status"],
                batch_size=result["batch_size"],
                total_ms=result["timings_ms"]["total"],
            )
            return result

    def _handle(self, job_id: str, cid: str, frame: Any, meta: Any) -> dict[str, Any]:
        if self.fatal is not None:  # the task turns this into a requeue
            raise DeviceLost(f"worker {self.name} lost its device: {self.fatal}")
        started = time.time()
        try:
            meta = _check_message(frame, meta)
        except BadInput as exc:
            log.warning("frame_malformed", error=str(exc))
            bad: FrameMeta = {  # enough to address an error result
                "model_id": str(meta.get("model_id")) if isinstance(meta, dict) else "?",
                "camera_id": None,
                "seq": None,
                "captured_at": None,
                "enqueued_at": started,
                "deadline_at": None,
                "format": "?",
                "width": 0,
                "height": 0,
            }
            return self._finish_early(FrameRecord(job_id, cid, bad), self.origin, Status.error, exc)
        rec = FrameRecord(job_id, cid, meta)
        rec.timings["queue"] = max(0.0, (started - meta["enqueued_at"]) * 1000.0)
        runner = self.runners.get(meta["model_id"])
        if runner is None:
            unserved = BadInput(f"model {meta['model_id']!r} is not served by worker {self.name}")
            return self._finish_early(rec, self.origin, Status.error, unserved)
        deadline = meta.get("deadline_at")
        if deadline is not None and started > deadline:
            log.info("frame_expired", stage="received")
            return self._finish_early(
                rec,
                runner.origin,
                Status.expired,
                ("DeadlineExceeded", "deadline passed before the worker received the frame"),
                runner,
            )
        runner.stats.record_frame_size(len(frame))
        s = self.settings
        t0 = time.perf_counter()
        try:
            image = codec.decode(
                frame,
                max_bytes=s.max_frame_bytes,
                max_pixels=s.max_frame_pixels,
                min_size=runner.model.manifest.input_size,
            )
        except BadFrame as exc:
            log.warning("frame_decode_failed", error=str(exc))
            return self._finish_early(rec, runner.origin, Status.error, exc, runner)
        t1 = time.perf_counter()
        try:
            x = runner.model.preprocess(image)
        except Exception as exc:
            log.warning("frame_preprocess_failed", error=f"{type(exc).__name__}: {exc}")
            return self._finish_early(rec, runner.origin, Status.error, exc, runner)
        t2 = time.perf_counter()
        rec.timings["decode"] = (t1 - t0) * 1000.0
        rec.timings["preprocess"] = (t2 - t1) * 1000.0
        job = FrameJob(rec, x, (meta["width"], meta["height"]))
        return runner.submit(job).result()

    def _finish_early(
        self,
        rec: FrameRecord,
        origin: Origin,
        status: Status,
        error: Any,
        runner: ModelRunner | None = None,
    ) -> dict[str, Any]:
        result = build_result(rec, origin, status, error=error)
        if runner is not None:
            runner.stats.record_results([result])
        self._deliver([(rec, result)])
        return result

    def _deliver(self, done: list[tuple[FrameRecord, dict[str, Any]]]) -> None:
        """After the task threads have their results: the camera streams, then webhooks."""
        self.streams.write([result for _, result in done])


def _log_health_change(model_id: str, old: ModelState, new: ModelState, reason: str) -> None:
    level = log.info if new in (ModelState.ready, ModelState.loading) else log.warning
    level("model_state_changed", model_id=model_id, old=old.value, new=new.value, reason=reason)
