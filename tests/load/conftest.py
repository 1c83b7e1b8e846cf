"""The system under load: a real Redis, a real ``shape_detector`` worker, a real gateway.

One stack per module (starting a worker takes seconds). ``FRAMEPOOL_LOAD=long``
(what ``make load`` sets) runs the long versions of the tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from framepool import codec
from framepool.redis_server import EmbeddedRedis
from producer.sources.synthetic import SyntheticCamera
from tests.conftest import WorkerProcess
from tests.services import Gateway

MODEL = "shape_detector"
LONG = os.environ.get("FRAMEPOOL_LOAD") == "long"


@dataclass
class LoadTarget:
    gateway: Gateway
    worker: WorkerProcess
    frames: list[bytes]
    redis_url: str


@pytest.fixture(scope="module")
def load_target(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoadTarget]:
    redis.Redis.from_url(redis_server.url).flushall()
    logs: Path = tmp_path_factory.mktemp("load")
    env = {**os.environ, "REDIS_URL": redis_server.url, "LOG_FORMAT": "json"}
    env.update(PYTHONUNBUFFERED="1")
    worker = WorkerProcess(env, [MODEL], logs / "worker.log")
    gateway = None
    try:
        worker.wait_ready(redis_server.url)
        gateway = Gateway(redis_server.url, logs / "gateway.log", LOG_LEVEL="WARNING")
        cam = SyntheticCamera("load", 320, 240, seed=11)
        frames = [codec.encode_jpeg(f.image) for f in cam.frames(24)]
        yield LoadTarget(gateway, worker, frames, redis_server.url)
    finally:
        if gateway is not None:
            gateway.stop()
        worker.stop()
