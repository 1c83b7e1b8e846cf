"""``framepool status``: the cluster as terminal tables, read straight from Redis."""

from __future__ import annotations

import redis

from framepool import keys
from tests.heartbeats import gpu_heartbeat, model_entry, publish
from tests.services import run_cli as cli


def test_status_shows_workers_gpus_models_queues_and_alerts(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    publish(client, gpu_heartbeat("gpu0-1@hostA", util=77.0))
    publish(
        client,
        gpu_heartbeat(
            "gpu1-1@hostB",
            host="hostB",
            gpu_index=1,
            models={"shape_detector": model_entry("shape_detector", state="degraded")},
        ),
    )
    client.sadd(keys.WORKERS, "cpu-9@gone")  # a name whose heartbeat has expired
    client.rpush(keys.queue_name("resnet50"), b"not a celery message")
    env = {"REDIS_URL": redis_url, "COLUMNS": "250"}
    out = cli("status", env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for expected in ("gpu0-1@hostA", "gpu1-1@hostB", "cpu-9@gone", "gone", "H100", "77.0%"):
        assert expected in text, (expected, text)
    assert "resnet50" in text and "shape_detector" in text and "degraded" in text
    assert "active alerts" in text


def test_status_without_redis_exits_3() -> None:
    out = cli("status", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.returncode == 3 and "Redis unreachable" in out.stderr
