"""The frame worker's Celery pool: ``framepool.infer`` without Celery's trace.

Celery's thread pool runs each task in a thread of its own through ``trace_task``
(signals, the request context, the result's repr, the error handling), and the
frame task then blocks that thread until its batch has run. Here the pool (Celery
lets a worker choose its pool class) runs a frame itself: a pool thread decodes
the message and hands the frame to the runtime, and returns (when the frame's model
has nothing to do, its runner thread does this instead, and runs the frame's batch
right after: no thread is woken between its decode and its batch); when the frame's
result has been written, the runner's future calls Celery's callbacks, as a
traced task would. Celery's request, its task events, its worker state and its
acks stay as they are. Other tasks go through Celery's thread pool as before.

On a warm shutdown the pool waits for the frames it still has in a batch before
it stops (their results are written, then acked), as the blocked threads made
Celery wait before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from time import monotonic
from typing import Any

from billiard.einfo import ExceptionInfo
from celery.concurrency.thread import ApplyResult, TaskPool
from celery.exceptions import Reject
from kombu.serialization import loads

from framepool import keys
from framepool.errors import WorkerStopping
from framepool.log import get_logger
from workers.runtime import WorkerRuntime, frame_done
from workers.task import REQUEUE, glimpse

log = get_logger(__name__)

ACCEPT = {"application/x-msgpack", "application/json"}


class FramePool(TaskPool):
    """Celery's thread pool, running frame tasks without a thread each (module doc)."""

    runtime: WorkerRuntime | None = None
    #: True once the worker drains: a frame that reaches the pool then goes back
    draining: Callable[[], bool] = staticmethod(lambda: False)
    #: rejects these frames' messages at once (``workers.main._reject_now``)
    hand_back: Callable[[list[str]], None] = staticmethod(lambda job_ids: None)
    result_max: int = 160  # characters of the result line in the task-succeeded event

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = threading.Condition()
        self._frames = 0  # accepted and not yet answered

    @classmethod
    def serving(cls, runtime: WorkerRuntime, draining: Callable[[], bool],
                hand_back: Callable[[list[str]], None]) -> type[FramePool]:  # fmt: skip
        """The pool class of one worker (Celery instantiates it)."""
        attrs = {"runtime": runtime, "draining": staticmethod(draining),
                 "hand_back": staticmethod(hand_back)}  # fmt: skip
        return type("FramePool", (cls,), attrs)

    # --------------------------------------------------------------- Celery's side
    def on_apply(self, target: Any, args: Any = None, kwargs: Any = None,
                 callback: Any = None, accept_callback: Any = None, **rest: Any) -> Any:  # fmt: skip
        if self.runtime is None or not args or args[0] != keys.INFER_TASK:
            return super().on_apply(target, args, kwargs, callback, accept_callback, **rest)
        if accept_callback is not None:
            accept_callback(os.getpid(), monotonic())  # task-started, the worker's active set
        with self._busy:
            self._frames += 1
        runner = self.runtime.runners.get(_model_of(args[2]) or "")
        if runner is not None:
            done: Future[None] = Future()
            if runner.run_here(partial(self._start, args, callback, monotonic(), done)):
                return ApplyResult(done)
        return ApplyResult(self.executor.submit(self._start, args, callback, monotonic()))

    def on_stop(self) -> None:
        """Wait for the frames in a batch to be answered, then stop the threads. (The
        worker's drain bounds the wait: SHUTDOWN_GRACE_SECONDS, then it exits.)"""
        with self._busy:
            while self._frames:
                self._busy.wait(0.5)
        super().on_stop()

    # --------------------------------------------------------------- one frame
    def _start(
        self, args: tuple[Any, ...], callback: Any, t0: float, done: Future[None] | None = None
    ) -> None:
        """Decode the message and hand its frame to the runtime (in a pool thread, or in
        the model's runner thread when the model had nothing to do: ``done`` is then
        the pool's record of the call)."""
        try:
            self._intake(args, callback, t0)
        finally:
            if done is not None:
                done.set_result(None)

    def _intake(self, args: tuple[Any, ...], callback: Any, t0: float) -> None:
        runtime = self.runtime
        assert runtime is not None
        _, job_id, request, body, content_type, encoding = args
        try:
            (frame, meta), _kw, _embed = loads(body, content_type, encoding, accept=ACCEPT)
            if self.draining():  # fetched as the drain began: straight back
                self.hand_back([job_id])
                raise WorkerStopping(f"worker {runtime.name} is stopping")
            cid = request.get("correlation_id") or job_id
            redelivered = bool((request.get("delivery_info") or {}).get("redelivered"))
            if redelivered and runtime.already_written(job_id):
                previous = self._stored(job_id)
                if previous is not None:  # executed before: answer with it, write nothing
                    runtime.count_duplicate(str(previous.get("model_id")))
                    self._answer(callback, t0, previous)
                    return
            out = runtime.start_frame(job_id, cid, frame, meta, redelivered)
        except BaseException as exc:
            self._failed(callback, t0, job_id, exc)
            return
        if isinstance(out, Future):
            out.add_done_callback(partial(self._done, callback, t0, job_id))
        else:
            self._answer(callback, t0, out)

    def _done(self, callback: Any, t0: float, job_id: str, fut: Future[dict[str, Any]]) -> None:
        try:
            result = fut.result()
        except BaseException as exc:
            self._failed(callback, t0, job_id, exc)
            return
        self._answer(callback, t0, result)

    def _stored(self, job_id: str) -> dict[str, Any] | None:
        """The result written by an earlier execution (Celery's result key)."""
        app = self.app
        if app is None:
            return None
        value = app.AsyncResult(job_id).result
        return value if isinstance(value, dict) else None

    def _answer(self, callback: Any, t0: float, result: dict[str, Any]) -> None:
        """The frame's result is written: Celery's success (its ack, its event)."""
        try:
            frame_done(result)
            callback((0, glimpse(result)[: self.result_max], monotonic() - t0))
        finally:
            self._release()

    def _failed(self, callback: Any, t0: float, job_id: str, exc: BaseException) -> None:
        """A frame handed back (a lost device, a drain, Redis away) is rejected with
        requeue, as the task raises ``Reject``; anything else fails the task."""
        try:
            if isinstance(exc, REQUEUE):
                try:
                    raise Reject(str(exc), requeue=True) from exc
                except Reject:
                    einfo = ExceptionInfo(internal=True)
            else:
                log.error("frame_task_failed", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
                try:
                    raise exc
                except BaseException:
                    einfo = ExceptionInfo()
                if self.app is not None:  # stored, as Celery's trace stores a task's error
                    self.app.backend.mark_as_failure(job_id, exc, traceback=einfo.traceback)
            callback((1, einfo, monotonic() - t0))
        finally:
            self._release()

    def _release(self) -> None:
        with self._busy:
            self._frames -= 1
            self._busy.notify_all()


def _model_of(request: Any) -> str | None:
    """The model whose queue the message came from (its routing key), or None."""
    info = request.get("delivery_info") if isinstance(request, dict) else None
    key = info.get("routing_key") if isinstance(info, dict) else None
    return keys.model_from_queue(key) if isinstance(key, str) else None
