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
from framepool.errors import BadFrame, BadInput
from framepool.log import LogTimer, bind_frame, get_logger
from framepool.schemas import FrameMeta, Status
from framepool.settings import Settings
from models.base import Model
from models.registry import load_model
from workers.results import FrameRecord, Origin, StreamWriter, build_result
from workers.runner import FrameJob, ModelRunner

log = get_logger(__name__)

_META_KEYS = ("model_id", "enqueued_at", "format", "width", "height")


def _check_message(frame: Any, meta: Any) -> FrameMeta:
    if not isinstance(meta, dict) or any(k not in meta for k in _META_KEYS):
        raise BadInput(f"malformed frame message: meta must hold {', '.join(_META_KEYS)}")
    if not isinstance(frame, bytes):
        raise BadInput(f"malformed frame message: frame is {type(frame).__name__}, not bytes")
    return meta  # type: ignore[return-value]


class WorkerRuntime:
    def __init__(
        self,
        settings: Settings,
        name: str,
        device: str,
        models: Iterable[Model],
        client: redis.Redis,
        incoming: Callable[[], int] = lambda: 0,
    ) -> None:
        self.settings = settings
        self.name = name
        self.device = device
        self.client = client
        self.streams = StreamWriter(client, settings.result_stream_maxlen)
        self.runners: dict[str, ModelRunner] = {}
        self._incoming = incoming
        for model in models:
            origin = Origin(worker=name, device=device, model_version=model.version)
            self.runners[model.id] = ModelRunner(
                model,
                origin,
                max_batch_size=settings.max_batch_size,
                timeout_s=settings.batch_timeout_s,
                finish=self.streams.write,
                incoming=self.incoming,
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
    ) -> WorkerRuntime:
        models = []
        for model_id in model_ids:
            with LogTimer(log, "model_load", model_id=model_id, device=device):
                model = load_model(settings.models_root, model_id, device)
                if settings.model_warmup_enabled:
                    model.warmup(batch_size=1)
            models.append(model)
        return cls(settings, name, device, models, client, incoming)

    def incoming(self) -> int:
        """Frames received by this worker but not yet handed to a runner."""
        return self._incoming() - sum(r.in_flight for r in self.runners.values())

    def start(self) -> None:
        for runner in self.runners.values():
            runner.start()
        try:
            self.client.sadd(keys.SERVED_MODELS, *self.runners)
        except redis.RedisError as exc:
            log.warning("served_models_register_failed", error=str(exc))

    def stop(self) -> None:
        for runner in self.runners.values():
            runner.stop()

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
            )
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
            return self._finish_early(rec, runner.origin, Status.error, exc)
        t1 = time.perf_counter()
        try:
            x = runner.model.preprocess(image)
        except Exception as exc:
            log.warning("frame_preprocess_failed", error=f"{type(exc).__name__}: {exc}")
            return self._finish_early(rec, runner.origin, Status.error, exc)
        t2 = time.perf_counter()
        rec.timings["decode"] = (t1 - t0) * 1000.0
        rec.timings["preprocess"] = (t2 - t1) * 1000.0
        job = FrameJob(rec, x, (meta["width"], meta["height"]))
        return runner.submit(job).result()

    def _finish_early(
        self, rec: FrameRecord, origin: Origin, status: Status, error: Any
    ) -> dict[str, Any]:
        result = build_result(rec, origin, status, error=error)
        self.streams.write([result])
        return result
