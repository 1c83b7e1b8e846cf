"""Building InferenceResult dicts and writing them to each camera's stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from framepool import keys
from framepool.log import get_logger
from framepool.schemas import FrameMeta, Status

log = get_logger(__name__)


@dataclass(slots=True)
class Origin:
    """Where a result was produced."""

    worker: str
    device: str
    model_version: str | None = None


@dataclass(slots=True)
class FrameRecord:
    """Everything known about one frame in the worker, for its result."""

    job_id: str
    correlation_id: str
    meta: FrameMeta
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def deadline_at(self) -> float | None:
        return self.meta.get("deadline_at")


def build_result(
    rec: FrameRecord,
    origin: Origin,
    status: Status,
    *,
    outputs: dict[str, Any] | None = None,
    error: BaseException | tuple[str, str] | None = None,
    batch_size: int = 0,
) -> dict[str, Any]:
    """The result as a plain dict with InferenceResult's fields (msgpack/JSON-ready)."""
    meta = rec.meta
    now = time.time()
    timings = {
        "queue": 0.0,
        "batch_wait": 0.0,
        "decode": 0.0,
        "preprocess": 0.0,
        "host_to_device": 0.0,
        "inference": 0.0,
        "postprocess": 0.0,
        **rec.timings,
    }
    timings["total"] = max(0.0, (now - meta["enqueued_at"]) * 1000.0)
    err: dict[str, str] | None = None
    if isinstance(error, BaseException):
        err = {"type": type(error).__name__, "message": str(error)}
    elif error is not None:
        err = {"type": error[0], "message": error[1]}
    return {
        "job_id": rec.job_id,
        "correlation_id": rec.correlation_id,
        "model_id": meta["model_id"],
        "model_version": origin.model_version,
        "camera_id": meta.get("camera_id"),
        "seq": meta.get("seq"),
        "status": status.value,
        "error": err,
        "outputs": outputs or {},
        "timings_ms": {k: round(v, 3) for k, v in timings.items()},
        "captured_at": meta.get("captured_at"),
        "enqueued_at": meta["enqueued_at"],
        "completed_at": now,
        "worker": origin.worker,
        "device": origin.device,
        "batch_size": batch_size,
    }


class StreamWriter:
    """Appends results to ``framepool:results:<camera_id>``, one pipeline per batch."""

    def __init__(self, client: redis.Redis, maxlen: int) -> None:
        self.client = client
        self.maxlen = maxlen

    def write(self, results: Iterable[Mapping[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        n = 0
        for r in results:
            camera = r.get("camera_id")
            if not camera:
                continue
            fields = {
                "job_id": r["job_id"],
                "seq": -1 if r.get("seq") is None else r["seq"],
                "status": r["status"],
                "result": json.dumps(r, separators=(",", ":")),
            }
            pipe.xadd(keys.result_stream(camera), fields, maxlen=self.maxlen, approximate=True)
            n += 1
        if not n:
            return
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # The result backend still holds every result; the stream is a convenience.
            log.error("result_stream_write_failed", error=str(exc), results=n)
