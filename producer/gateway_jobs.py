"""The gateway's blocking work: enqueue a frame, wait for its result, look a job up.

Everything here calls Redis or Celery synchronously; the routes run it in a
thread pool of its own (see :mod:`producer.gateway`).

Celery's result backend answers ``PENDING`` both for a job still queued and
for one it never heard of, so the gateway records every job it enqueues under
``keys.gateway_job(job_id)`` for ``RESULT_TTL_SECONDS`` (as long as the result
itself is kept): ``GET /v1/jobs/{id}`` answers 404 only for an id that is in
neither place.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import redis
from celery import states

from framepool import keys
from framepool.errors import BrokerUnavailable, ResultTimeout
from framepool.log import bind_frame, get_logger
from framepool.schemas import InferenceResult
from framepool.settings import Settings
from producer.client import FrameProducer
from producer.frame_handle import FrameHandle
from producer.gateway_edge import GatewayMetrics
from producer.gateway_errors import ApiError, from_framepool
from producer.gateway_results import ResultWaiter
from producer.result_wait import decode_with

log = get_logger(__name__)

_JOB_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Seconds ``GET /v1/jobs/{id}`` waits to read a result that is already stored.
_READ_RESULT_S = 5.0


class GatewayJobs:
    """Enqueue through a :class:`FrameProducer`, remember the job, fetch its result."""

    def __init__(self, settings: Settings, producer: FrameProducer, metrics: GatewayMetrics):
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self.redis = producer.redis
        self.results = ResultWaiter(settings.redis_url)
        self._decode = decode_with(producer.app.backend)

    def enqueue(
        self,
        model_id: str,
        frame: bytes,
        *,
        correlation_id: str,
        camera_id: str | None = None,
        seq: int | None = None,
        captured_at: float | None = None,
        deadline_ms: float | None = None,
        callback_url: str | None = None,
        latest_wins: bool | None = None,
    ) -> FrameHandle:
        """Put a checked frame on ``model_id``'s queue; 404/429/503 raised as ``ApiError``."""
        handle = self.producer.submit(
            model_id,
            frame,
            camera_id=camera_id,
            seq=seq,
            captured_at=captured_at,
            correlation_id=correlation_id,
            deadline_ms=deadline_ms,
            callback_url=callback_url,
            latest_wins=latest_wins,
        )
        if handle.refused is not None:  # QUEUE_FULL_POLICY=drop: counted, not raised
            raise from_framepool(handle.refused)
        self.metrics.frames.labels(model_id).inc()
        record = {
            "model_id": model_id,
            "correlation_id": handle.correlation_id,
            "camera_id": camera_id,
            "seq": seq,
            "captured_at": captured_at,
            "enqueued_at": time.time(),
        }
        try:
            self.redis.set(
                keys.gateway_job(handle.job_id),
                json.dumps(record),
                ex=self.settings.result_ttl_seconds,
            )
        except redis.RedisError as exc:  # the frame is queued: say so, do not fail the call
            log.warning("gateway_job_record_failed", job_id=handle.job_id, error=str(exc))
        with bind_frame(job_id=handle.job_id, camera_id=camera_id):
            log.debug("gateway_frame_enqueued", model_id=model_id, seq=seq, size=len(frame))
        return handle

    async def wait(self, handle: FrameHandle, timeout: float) -> InferenceResult:
        """The job's result; 504 (with the job id, to poll later) when none comes in time.

        Waits in the event loop on the result's pub/sub channel (ResultWaiter), not
        in a thread on Celery's shared one."""
        if handle.refused is not None:
            return handle.get()
        try:
            raw = await self.results.wait(handle.job_id, timeout)
        except (redis.RedisError, OSError) as err:
            raise from_framepool(BrokerUnavailable(f"Redis unreachable: {err}")) from None
        if raw is None:
            exc = ResultTimeout(f"no result for job {handle.job_id} within {timeout}s")
            raise from_framepool(
                exc,
                job_id=handle.job_id,
                correlation_id=handle.correlation_id,
                status_url=f"/v1/jobs/{handle.job_id}",
            )
        return handle.result_from(self._decode(raw))

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{job_id}``: the result when there is one, else ``pending``."""
        if not _JOB_ID.match(job_id):
            raise ApiError(404, "unknown_job", f"no job {job_id!r}", job_id=job_id)
        raw = self.redis.get(keys.gateway_job(job_id))
        record: dict[str, Any] | None = json.loads(raw) if raw else None
        state = self.producer.app.AsyncResult(job_id).state
        if state in states.READY_STATES:
            meta = record or {"model_id": "unknown"}
            cid = str(meta.get("correlation_id") or job_id)
            handle = FrameHandle(self.producer.app, job_id, cid, meta, None,
                                 self.producer.results, self._decode)  # fmt: skip
            return handle.get(timeout=_READ_RESULT_S).model_dump(mode="json")
        if record is None:
            raise ApiError(
                404,
                "unknown_job",
                f"no job {job_id!r} (never submitted, or its result expired after "
                f"RESULT_TTL_SECONDS={self.settings.result_ttl_seconds})",
                job_id=job_id,
            )
        return {
            "job_id": job_id,
            "status": "pending" if state == states.PENDING else state.lower(),
            **record,
        }
