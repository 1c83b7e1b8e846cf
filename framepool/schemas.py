"""What travels between producer and worker, and what comes back.

``FrameMeta`` is the second argument of the ``framepool.infer`` task (the first
is the frame's bytes, so it travels as msgpack ``bin``, never base64).
``InferenceResult`` is what the task returns, what the camera's stream holds
and what ``FrameHandle.get`` gives back.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from pydantic import BaseModel, Field


class FrameMeta(TypedDict):
    model_id: str
    camera_id: str | None
    seq: int | None
    captured_at: float | None
    enqueued_at: float
    deadline_at: float | None  # epoch seconds; the frame is dropped if not started by then
    callback_url: NotRequired[str | None]
    latest_wins: NotRequired[bool]  # drop me if a newer frame of my camera is queued
    format: str  # "jpeg" | "png"
    width: int
    height: int


class Status(StrEnum):
    ok = "ok"
    error = "error"
    expired = "expired"
    rejected = "rejected"


class ErrorInfo(BaseModel):
    type: str
    message: str


class Timings(BaseModel):
    queue: float = 0.0
    batch_wait: float = 0.0
    decode: float = 0.0
    preprocess: float = 0.0
    host_to_device: float = 0.0  # stacking and the copy to the GPU (CUDA events there)
    inference: float = 0.0
    postprocess: float = 0.0
    total: float = 0.0


class InferenceResult(BaseModel):
    job_id: str
    correlation_id: str
    model_id: str
    model_version: str | None = None
    camera_id: str | None = None
    seq: int | None = None
    status: Status
    error: ErrorInfo | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    timings_ms: Timings = Field(default_factory=Timings)
    captured_at: float | None = None
    enqueued_at: float | None = None
    completed_at: float | None = None
    worker: str | None = None
    device: str | None = None
    batch_size: int = 0

    @property
    def ok(self) -> bool:
        return self.status is Status.ok
