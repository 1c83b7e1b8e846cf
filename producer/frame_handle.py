"""FrameHandle: a submitted frame's ids now, and its ``InferenceResult`` when it comes.

A handle made by :class:`producer.FrameProducer` waits on the producer's own
:class:`~producer.result_wait.ResultListener`; one made without a listener waits
through Celery's ``AsyncResult``. A frame refused at enqueue (queue full) answers
at once with a local ``rejected`` result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from framepool.errors import BrokerUnavailable, QueueFull, ResultTimeout
from framepool.schemas import ErrorInfo, InferenceResult, Status
from producer.result_wait import ResultListener, decode_with


class FrameHandle:
    """A submitted frame: its ids now, its ``InferenceResult`` later."""

    def __init__(
        self,
        app: Celery,
        job_id: str,
        correlation_id: str,
        meta: Mapping[str, Any],
        refused: QueueFull | None = None,
        listener: ResultListener | None = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> None:
        self._app = app
        self._listener = listener
        self._decode = decode  # a stored result's value (``decode_with``)
        self.job_id = job_id
        self.correlation_id = correlation_id
        self.model_id: str = meta["model_id"]
        self.camera_id: str | None = meta.get("camera_id")
        self.seq: int | None = meta.get("seq")
        self._meta = meta
        self.refused = refused

    def __repr__(self) -> str:
        return f"<FrameHandle {self.job_id} model={self.model_id} cam={self.camera_id}>"

    def ready(self) -> bool:
        return self.refused is not None or bool(self._app.AsyncResult(self.job_id).ready())

    def get(self, timeout: float | None = 10.0) -> InferenceResult:
        """Wait for the result; raises ``ResultTimeout`` when none comes in time."""
        if self.refused is not None:
            return self._local_result(Status.rejected, self.refused)
        if self._listener is None:  # a handle made outside a producer: Celery's own wait
            async_result = self._app.AsyncResult(self.job_id)
            try:
                value = async_result.get(timeout=timeout, propagate=False)
            except CeleryTimeout as exc:
                raise ResultTimeout(f"no result for job {self.job_id} within {timeout}s") from exc
            return self.result_from(value)
        try:
            raw = self._listener.wait(self.job_id, timeout)
        except redis.RedisError as exc:
            raise BrokerUnavailable.from_redis(exc) from exc
        if raw is None:
            raise ResultTimeout(f"no result for job {self.job_id} within {timeout}s")
        decode = self._decode or decode_with(self._app.backend)
        return self.result_from(decode(raw))

    def result_from(self, value: Any) -> InferenceResult:
        """The ``InferenceResult`` for the task's stored return value."""
        if isinstance(value, dict):
            return InferenceResult.model_validate(value)
        # The task itself failed (worker bug, lost worker): say so as an error result.
        return self._local_result(Status.error, value)

    def _local_result(self, status: Status, exc: BaseException | Any) -> InferenceResult:
        return InferenceResult(
            job_id=self.job_id,
            correlation_id=self.correlation_id,
            model_id=self.model_id,
            camera_id=self.camera_id,
            seq=self.seq,
            status=status,
            error=ErrorInfo(type=type(exc).__name__, message=str(exc)),
            captured_at=self._meta.get("captured_at"),
            enqueued_at=self._meta.get("enqueued_at"),
            completed_at=time.time(),
        )
