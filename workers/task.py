"""The ``framepool.infer`` Celery task: one frame, one task, one result, one ack.

A frame worker runs these tasks through its own pool (``workers.frame_pool``),
which answers Celery's callbacks without calling the task's body; the body below
is what a plain Celery pool runs, and the glimpse is what both return."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

from framepool import keys
from framepool.errors import BrokerUnavailable, DeviceLost, ResultNotStored, WorkerStopping
from workers.runtime import WorkerRuntime

#: a frame that ends with one of these goes back to its queue (no result, no ack): the
#: GPU is gone (a healthy worker takes it while this process shuts down), the worker is
#: draining and had not started it, or Redis is away (its bytes could not be read, or
#: its result written)
REQUEUE = (DeviceLost, WorkerStopping, ResultNotStored, BrokerUnavailable)


class Glimpse:
    """What the task returns: one line about its result for Flower (the task-succeeded
    event carries the repr of the return value). The whole ``InferenceResult`` is in
    the result backend and the camera's stream already; the repr of that dict, which
    Celery builds for every task, took ~36 us of the GIL per frame and showed Flower
    mostly the job id."""

    __slots__ = ("result", "_line")

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        self._line: str | None = None

    def __repr__(self) -> str:
        if self._line is None:
            self._line = glimpse(self.result)
        return self._line


def glimpse(result: dict[str, Any]) -> str:
    """``ok model=resnet18 batch=8 total=41.2ms cid=cam1:17``; an error adds its type
    and message."""
    total = (result.get("timings_ms") or {}).get("total")
    parts = [
        str(result.get("status")),
        f"model={result.get('model_id')}",
        f"batch={result.get('batch_size')}",
        f"total={total:.1f}ms" if isinstance(total, int | float) else "total=?",
        f"cid={result.get('correlation_id')}",
    ]
    err = result.get("error")
    if isinstance(err, dict):
        parts.append(f"{err.get('type')}: {err.get('message')}")
    return " ".join(parts)


def register_infer_task(app: Celery, runtime: WorkerRuntime) -> Task:
    @app.task(
        name=keys.INFER_TASK,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        # the runtime writes each result itself, in Celery's format, with its batch
        # (one round trip per batch, before the ack); Celery stores only a task crash
        ignore_result=True,
        store_errors_even_if_ignored=True,
        # the task-succeeded event carries repr(Glimpse): one line, cut at 160 characters
        resultrepr_maxsize=160,
    )
    def infer(self: Task, frame: bytes | None, meta: dict[str, Any]) -> Glimpse:
        request = self.request
        # The producer sets the correlation id as both the message header and the
        # AMQP-style property Celery exposes; a foreign producer's frames fall back
        # to the job id.
        cid = request.correlation_id or request.id
        redelivered = bool((request.delivery_info or {}).get("redelivered"))
        if redelivered and runtime.already_written(request.id):
            # Executed before (a visibility timeout passed while it ran, or its worker
            # died after writing): answer with the stored result, write nothing twice.
            previous = self.AsyncResult(request.id).result
            if isinstance(previous, dict):
                runtime.count_duplicate(str(previous.get("model_id")))
                return Glimpse(previous)
        try:
            return Glimpse(runtime.handle(request.id, cid, frame, meta, redelivered))
        except REQUEUE as exc:
            raise Reject(str(exc), requeue=True) from exc

    return infer
