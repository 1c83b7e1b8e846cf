"""The Celery app shared by producers, workers and Flower."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery, bootsteps

from celeryconfig import celery_config
from framepool.settings import Settings

#: Task events wait at most this long to leave, together, in one message.
EVENT_FLUSH_INTERVAL_S = 0.02


class BatchedTaskEvents(bootsteps.StartStopStep):
    """Task events leave in one message every ``EVENT_FLUSH_INTERVAL_S``.

    Each frame task makes three events (received, started, succeeded). Celery
    buffers them, but asks its event loop to flush after every one, so each goes
    out as its own PUBLISH on the consumer thread, the worker's one serial stage.
    Here the first buffered event arms a timer on the event loop and the flush
    sends all that came meanwhile as one ``task-multi`` message (the form Flower
    and ``celery events`` already read); Celery still flushes at once when its
    buffer is full. Events reach Flower up to 20 ms later. Applied again after
    every reconnect (the step's ``start`` runs with the consumer's)."""

    requires = ("celery.worker.consumer.events:Events",)

    def start(self, c: Any) -> None:
        dispatcher, hub = c.event_dispatcher, c.hub
        if dispatcher is None or hub is None or not dispatcher.enabled:
            return
        armed = [False]

        def flush() -> None:
            armed[0] = False
            c._flush_events()

        def arm() -> None:  # in the event loop's thread
            hub.call_later(EVENT_FLUSH_INTERVAL_S, flush)

        def on_buffered() -> None:  # from any thread (pool threads send events too)
            if not armed[0]:
                armed[0] = True
                hub.call_soon(arm)

        dispatcher.on_send_buffered = on_buffered


def create_app(settings: Settings) -> Celery:
    app = Celery("framepool", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def thread_worker(
    app: Celery, name: str, queues: Sequence[str], concurrency: int, loglevel: str,
    pool: Any = "threads",
) -> Any:  # fmt: skip
    """A Celery worker with a thread pool consuming ``queues`` (frame workers, with
    ``workers.frame_pool.FramePool``, and the webhook worker). Mingle and gossip are
    off: heartbeats in Redis do that job. Task events are sent in batches
    (:class:`BatchedTaskEvents`)."""
    if BatchedTaskEvents not in app.steps["consumer"]:
        app.steps["consumer"].add(BatchedTaskEvents)
    return app.Worker(
        hostname=name,
        queues=list(queues),
        pool=pool,
        concurrency=concurrency,
        loglevel=loglevel,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
    )
