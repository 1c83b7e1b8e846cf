"""``framepool worker``: one Celery worker process pinned to one device.

The caller pins the device (``workers.device.pin_device``) before this module
is imported, because importing it imports torch.

Startup follows the seed's flow: settings and logging (done by the CLI), the
GPU manager, models placed, loaded and warmed up, heartbeats, then the queues of
the models that are ready. Exit codes:

- ``0`` stopped on request;
- ``4`` (``EXIT_NO_MODELS``) no model could be loaded;
- ``5`` (``EXIT_DEVICE_LOST``) a sticky CUDA error: the frames in flight were
  requeued for a healthy worker, and a supervisor should start a fresh process.

SIGTERM or SIGINT drains (Celery's warm shutdown, plus :func:`_drain_on_shutdown`):
the frames not yet in a batch go back to their queues at once, the running batches
finish, and after ``SHUTDOWN_GRACE_SECONDS`` whatever still runs is handed back too
and the process exits. The heartbeat lists the queues the worker consumes now
(``queues``), which ``framepool scale`` changes at run time.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

import redis
from celery import signals
from celery.worker import state as worker_state
from celery.worker.control import control_command

from framepool import keys
from framepool.celery_app import create_app, thread_worker
from framepool.errors import FramepoolError
from framepool.heap import freeze_startup_heap
from framepool.log import get_logger
from framepool.nvml import NvmlSampler
from framepool.settings import Settings
from workers.device import resolve_device
from workers.frame_pool import FramePool
from workers.heartbeat import Heartbeat
from workers.runtime import WorkerRuntime
from workers.task import register_infer_task

log = get_logger(__name__)

EXIT_OK = 0
EXIT_NO_MODELS = 4
EXIT_DEVICE_LOST = 5

# Celery logs two INFO lines per task; at camera rates that is most of the log.
_QUIET = ("celery.worker.strategy", "celery.app.trace")

_runtime: WorkerRuntime | None = None  # the control command reaches it here


@control_command(
    name=keys.PROFILE_COMMAND,
    args=[("batches", int), ("model", str)],
    signature="batches=1 [model]",
)
def _profile_command(state: Any, batches: int = 1, model: str | None = None) -> dict[str, Any]:
    """Profile the next N batches of one model (or every model) on this worker."""
    if _runtime is None:
        return {"error": "worker not started"}
    if batches < 1:
        return {"error": "batches must be >= 1"}
    try:
        return {"ok": _runtime.profile(batches, model or None)}
    except FramepoolError as exc:
        return {"error": str(exc)}


def default_name(device: str) -> str:
    tag = "cpu" if device == "cpu" else device.replace("cuda:", "gpu")
    return f"{tag}-1@{socket.gethostname()}"


def run_worker(
    settings: Settings,
    pinned_device: str,
    model_ids: Sequence[str],
    concurrency: int | None = None,
    name: str | None = None,
) -> int:
    """Load the models, then consume their queues until stopped. Returns the exit code."""
    global _runtime
    device = resolve_device(pinned_device, settings.enable_gpu, settings.gpu_fallback_to_cpu)
    name = name or default_name(device)
    if settings.log_level != "DEBUG":
        for logger_name in _QUIET:
            logging.getLogger(logger_name).setLevel(logging.WARNING)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    runtime = WorkerRuntime.load(
        settings,
        name,
        device,
        model_ids,
        client,
        incoming=lambda: len(worker_state.reserved_requests),
        sampler=NvmlSampler(pids=[os.getpid()]),
    )
    _runtime = runtime
    consumer: list[Any] = []  # Celery's consumer, once ready: the queues it consumes

    def snapshot() -> dict[str, Any]:
        return {**runtime.snapshot(), "queues": _consumed_queues(consumer)}

    heartbeat = Heartbeat(client, name, settings.heartbeat_interval_seconds, snapshot)
    heartbeat.start()
    if not runtime.ready_models:
        log.error("worker_no_models", worker=name, asked=list(model_ids))
        heartbeat.stop("failed")
        return EXIT_NO_MODELS

    def _on_fatal(exc: BaseException) -> None:
        heartbeat.beat_now()
        os.kill(os.getpid(), signal.SIGTERM)  # warm shutdown: in-flight frames are requeued

    runtime.on_fatal = _on_fatal
    app = create_app(settings)
    register_infer_task(app, runtime)
    runtime.start()

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: object) -> None:
        consumer.append(sender)
        runtime.state = "ready"
        heartbeat.beat_now()
        log.info(
            "worker_ready",
            worker=name,
            device=device,
            models=runtime.ready_models,
            failed=[m for m in model_ids if m not in runtime.runners],
        )

    concurrency = concurrency or settings.worker_concurrency or 2 * settings.max_batch_size
    stopped = threading.Event()
    draining = _drain_on_shutdown(settings, runtime, heartbeat, consumer, stopped)
    worker = thread_worker(
        app,
        name,
        [keys.queue_name(m) for m in runtime.ready_models],
        concurrency,
        settings.log_level,
        pool=FramePool.serving(runtime, draining.is_set, _reject_now),
    )
    freeze_startup_heap()  # models loaded, no frame yet: no full collection over them
    try:
        worker.start()
    finally:
        stopped.set()
        runtime.stop()
        heartbeat.stop(runtime.state)
        _runtime = None
        log.info("worker_stopped", worker=name, exitcode=worker.exitcode, state=runtime.state)
    if runtime.fatal is not None:
        return EXIT_DEVICE_LOST
    return int(worker.exitcode or 0)


def _consumed_queues(consumer: list[Any]) -> list[str] | None:
    """The queues Celery's consumer takes frames from now (``None`` before it is up)."""
    task_consumer = getattr(consumer[0], "task_consumer", None) if consumer else None
    if task_consumer is None:
        return None
    return sorted(q.name for q in list(task_consumer.queues))


def _drain_on_shutdown(
    settings: Settings,
    runtime: WorkerRuntime,
    heartbeat: Heartbeat,
    consumer: list[Any],
    stopped: threading.Event,
) -> threading.Event:
    """On Celery's shutdown signal (SIGTERM, SIGINT, SIGQUIT) hand back the frames not yet
    in a batch at once (:meth:`WorkerRuntime.drain`). If the worker has not stopped
    ``SHUTDOWN_GRACE_SECONDS`` later (a batch still in the model), hand back every frame
    not yet acknowledged and exit: nothing waits for the visibility timeout.

    Celery acks and rejects through its consumer's event loop, which a warm shutdown has
    stopped: its own reject would only reach Redis when the worker closes its channel.
    So the messages are rejected here directly (:func:`_reject_now`), and at the end of
    the grace kombu's restore of everything unacknowledged (what closing the channel
    does) runs before the process exits."""
    grace = settings.shutdown_grace_seconds
    begun = threading.Event()

    def hand_back() -> None:
        handed = runtime.drain(_reject_now)
        heartbeat.beat_now()
        log.info("worker_draining", worker=runtime.name, handed_back=handed, grace_s=grace)
        if stopped.wait(grace):
            return
        late = sum(1 for r in list(worker_state.active_requests) if not r.acknowledged)
        try:
            consumer[0].task_consumer.channel.qos.restore_unacked_once()
        except Exception as exc:  # the frames then come back after the visibility timeout
            log.error("drain_restore_failed", worker=runtime.name, error=repr(exc))
        log.warning("drain_grace_expired", worker=runtime.name, handed_back=late, grace_s=grace)
        heartbeat.stop("stopped")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(EXIT_OK)  # the model's thread cannot be interrupted; the frames are safe

    @signals.worker_shutting_down.connect(weak=False)
    def _shutting_down(**_: object) -> None:
        # inside Celery's signal handler: the work happens in a thread of its own
        if not begun.is_set():
            begun.set()
            threading.Thread(target=hand_back, name="drain", daemon=True).start()

    @signals.task_prerun.connect(weak=False)
    def _received_while_draining(task_id: str | None = None, **_: object) -> None:
        if begun.is_set() and task_id:  # fetched as the drain began: straight back
            _reject_now([task_id])

    return begun  # the frame pool asks it of each frame it starts (no task_prerun there)


def _reject_now(job_ids: list[str]) -> None:
    """Put these frames' messages back on their queues now (see :func:`_drain_on_shutdown`)."""
    wanted = set(job_ids)
    for request in list(worker_state.active_requests):
        if request.id not in wanted or request.acknowledged:
            continue
        request.acknowledged = True  # Celery's own reject of it is a no-op from now on
        try:
            request.message.reject(requeue=True)
        except Exception as exc:  # restored when the channel closes instead
            log.warning("hand_back_failed", job_id=request.id, error=repr(exc))
