"""The Celery app shared by producers, workers and Flower."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from celeryconfig import celery_config
from framepool.settings import Settings


def create_app(settings: Settings) -> Celery:
    app = Celery("framepool", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def thread_worker(
    app: Celery, name: str, queues: Sequence[str], concurrency: int, loglevel: str
) -> Any:
    """A Celery worker with a thread pool consuming ``queues`` (frame workers and the
    webhook worker alike). Mingle and gossip are off: heartbeats in Redis do that job."""
    return app.Worker(
        hostname=name,
        queues=list(queues),
        pool="threads",
        concurrency=concurrency,
        loglevel=loglevel,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
    )
