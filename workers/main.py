"""``framepool worker``: one Celery worker process pinned to one device.

The caller pins the device (``workers.device.pin_device``) before this module
is imported, because importing it imports torch.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import redis
from celery import signals
from celery.worker import state as worker_state

from framepool import keys
from framepool.celery_app import create_app
from framepool.log import get_logger
from framepool.settings import Settings
from workers.device import resolve_device
from workers.runtime import WorkerRuntime
from workers.task import register_infer_task

log = get_logger(__name__)

# Celery logs two INFO lines per task; at camera rates that is most of the log.
_QUIET = ("celery.worker.strategy", "celery.app.trace")


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
    )
    app = create_app(settings)
    register_infer_task(app, runtime)
    runtime.start()

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        log.info("worker_ready", worker=name, device=device, models=list(runtime.runners))

    concurrency = concurrency or settings.worker_concurrency or 2 * settings.max_batch_size
    worker = app.Worker(
        hostname=name,
        queues=[keys.queue_name(m) for m in model_ids],
        pool="threads",
        concurrency=concurrency,
        loglevel=settings.log_level,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
    )
    try:
        worker.start()
    finally:
        runtime.stop()
        log.info("worker_stopped", worker=name, exitcode=worker.exitcode)
    return int(worker.exitcode or 0)
