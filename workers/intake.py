"""A frame's way in: checked, read, decoded and preprocessed, then handed to its model's runner.

:class:`FrameIntake` runs in a thread of the frame pool (``workers/frame_pool.py``),
or in the model's runner thread when the model has nothing to do
(``ModelRunner.run_here``); the runtime has bound the frame's ids to the log
context. It checks the message and the deadline,
reads a claim-checked frame's bytes (prefetched with its message by the
consumer, else from Redis), decodes the frame (or only reads its header, when
the model decodes JPEG on the GPU) and preprocesses it, so decoding overlaps
the model's forward pass; then the runner includes it in a batch. A frame that
ends early (malformed, unserved model, expired, bytes gone, not decodable) gets
its result written here at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np
import redis

from framepool import codec, keys
from framepool.broker import PREFETCHED
from framepool.errors import BadFrame, BadInput, BrokerUnavailable, FrameMissing
from framepool.log import get_logger
from framepool.schemas import FrameMeta, Status
from framepool.settings import Settings
from workers.results import FrameRecord, Origin, build_result
from workers.runner import Finish, FrameJob, ModelRunner

log = get_logger(__name__)

_META_KEYS = ("model_id", "enqueued_at", "format", "width", "height")
#: longest a task waits for the frame the consumer's call after BRPOP is reading for
#: it (the call's round trip; a Redis client's socket timeout is 5 s); then it reads it
PREFETCH_WAIT_S = 5.0


def _check_message(frame: Any, meta: Any) -> FrameMeta:
    if not isinstance(meta, dict) or any(k not in meta for k in _META_KEYS):
        raise BadInput(f"malformed frame message: meta must hold {', '.join(_META_KEYS)}")
    if frame is not None and not isinstance(frame, bytes):
        raise BadInput(
            f"malformed frame message: frame is {type(frame).__name__}, not bytes "
            "(or None: claim-checked under framepool:frame:<job_id>)"
        )
    return meta  # type: ignore[return-value]


class FrameIntake:
    """One worker's frames on their way to its models' runners."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        client: redis.Redis,
        runners: Mapping[str, ModelRunner],
        origin: Origin,
        deliver: Finish,
    ) -> None:
        self.settings = settings
        self.name = name
        self.client = client
        self.runners = runners
        self.origin = origin
        self._deliver = deliver

    def take(
        self, job_id: str, cid: str, frame: Any, meta: Any, redelivered: bool
    ) -> dict[str, Any] | Future[dict[str, Any]]:
        """Check, read and decode one frame and hand it to its model's runner: the future
        of its written result; or the result itself when the frame ended early, written
        already."""
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
        if frame is None:
            try:  # BrokerUnavailable (Redis away) hands the message back
                frame = self._claim(job_id)
            except FrameMissing as exc:
                log.warning("frame_missing", error=str(exc))
                return self._finish_early(rec, runner.origin, Status.error, exc, runner)
        if redelivered:
            rec.redelivered, rec.frame = True, frame
        runner.stats.record_frame_size(len(frame))
        s, model = self.settings, runner.model
        on_device = s.gpu_jpeg_decode and model.accepts_jpeg and frame[:3] == codec.JPEG_SOI
        t0 = time.perf_counter()
        try:
            if on_device:  # header and limits here; decoded with its batch, on the GPU
                codec.probe(frame, max_bytes=s.max_frame_bytes, max_pixels=s.max_frame_pixels)
                image = None
            else:
                image = codec.decode(frame, max_bytes=s.max_frame_bytes,
                                     max_pixels=s.max_frame_pixels,
                                     min_size=model.manifest.input_size)  # fmt: skip
        except BadFrame as exc:
            log.warning("frame_decode_failed", error=str(exc))
            return self._finish_early(rec, runner.origin, Status.error, exc, runner)
        t1 = time.perf_counter()
        try:
            x = (
                np.frombuffer(bytearray(frame), np.uint8)
                if image is None
                else model.preprocess(image)
            )
        except Exception as exc:
            log.warning("frame_preprocess_failed", error=f"{type(exc).__name__}: {exc}")
            return self._finish_early(rec, runner.origin, Status.error, exc, runner)
        t2 = time.perf_counter()
        rec.timings["decode"] = (t1 - t0) * 1000.0
        rec.timings["preprocess"] = (t2 - t1) * 1000.0
        job = FrameJob(rec, x, (meta["width"], meta["height"]))
        return runner.submit(job)

    def _claim(self, job_id: str) -> bytes:
        """A claim-checked frame's bytes (deleted later, with its result): read with its
        message by the consumer (``framepool.broker.PREFETCHED``; for BRPOP's message
        the call may still be on its way), else from Redis."""
        prefetched = PREFETCHED.take(job_id, wait_s=PREFETCH_WAIT_S)
        if prefetched is not None:
            return prefetched
        try:
            data = self.client.get(keys.frame_data(job_id))
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"cannot read the frame from Redis: {exc}") from exc
        if data is None:
            raise FrameMissing(
                f"the frame's bytes are gone from Redis ({keys.frame_data(job_id)}): it waited "
                f"longer than FRAME_TTL_SECONDS={self.settings.frame_ttl_seconds}, or was deleted"
            )
        return bytes(data)

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
