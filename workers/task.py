"""The ``framepool.infer`` Celery task: one frame, one task, one result, one ack."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

from framepool import keys
from framepool.errors import BrokerUnavailable, DeviceLost, ResultNotStored, WorkerStopping
from workers.runtime import WorkerRuntime


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
        # the task-succeeded event carries repr(result); Flower needs a glimpse, not all of it
        resultrepr_maxsize=96,
    )
    def infer(self: Task, frame: bytes | None, meta: dict[str, Any]) -> dict[str, Any]:
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
                return previous
        try:
            return runtime.handle(request.id, cid, frame, meta, redelivered)
        except DeviceLost as exc:
            # The GPU is gone: no result, no ack. The message goes back to the
            # queue for a healthy worker while this process shuts down.
            raise Reject(str(exc), requeue=True) from exc
        except (WorkerStopping, ResultNotStored, BrokerUnavailable) as exc:
            # The worker is draining and had not started this frame, or Redis is away (its
            # bytes could not be read, or its result written): hand it back for later.
            raise Reject(str(exc), requeue=True) from exc

    return infer
