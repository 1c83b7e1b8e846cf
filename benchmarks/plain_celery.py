"""The baseline a team would hand-roll: one plain Celery task per frame.

Same Redis, same configuration as framepool (``celeryconfig.celery_config``:
msgpack, acks_late, task events on, prefetch 1, Redis result backend) but
kombu's stock Redis transport; the task
decodes the JPEG at full size with the same simplejpeg call framepool makes and
returns a small dict, which Celery stores in the result backend for the
producer to read back.

    celery -A benchmarks.plain_celery worker -P solo -Q bench.plain   (REDIS_URL from env)
"""

from __future__ import annotations

import os
import time
from typing import Any

import simplejpeg
from celery import Celery

from celeryconfig import celery_config
from framepool.settings import Settings

TASK = "bench.decode"
QUEUE = "bench.plain"


def make_app(redis_url: str) -> Celery:
    app = Celery("plain", set_as_current=False)
    conf = celery_config(Settings(redis_url=redis_url))
    # kombu's stock Redis transport, as a hand-rolled setup has it (not framepool.broker,
    # whose client reuse would make the baseline faster than what users run)
    conf.pop("broker_transport")
    app.conf.update(conf)

    @app.task(name=TASK, acks_late=True, ignore_result=False, shared=False)
    def decode_frame(frame: bytes, enqueued_at: float) -> dict[str, Any]:
        image = simplejpeg.decode_jpeg(frame, colorspace="RGB", fastdct=True, fastupsample=True)
        return {
            "shape": list(image.shape),
            "enqueued_at": enqueued_at,
            "completed_at": time.time(),
        }

    return app


#: The worker's app (``celery -A benchmarks.plain_celery``); REDIS_URL from the environment.
app = make_app(os.environ.get("REDIS_URL", Settings().redis_url))
