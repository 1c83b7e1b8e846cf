"""Heartbeat writes (fakeredis) and the per-model counters and histograms."""

from __future__ import annotations

import json

import fakeredis
import redis

from framepool import keys
from workers.heartbeat import Heartbeat
from workers.stats import Histogram, ModelStats


def test_heartbeat_writes_json_with_a_ttl_and_registers_the_worker() -> None:
    client = fakeredis.FakeRedis()
    hb = Heartbeat(client, "w1@h", 2.0, lambda: {"worker": "w1@h", "n": 1})
    assert hb.write()
    assert json.loads(client.get(keys.worker_heartbeat("w1@h"))) == {"worker": "w1@h", "n": 1}
    assert 0 < client.ttl(keys.worker_heartbeat("w1@h")) <= keys.heartbeat_ttl(2.0) == 6
    assert client.smembers(keys.WORKERS) == {b"w1@h"}


def test_a_failing_snapshot_or_redis_does_not_stop_the_heartbeat() -> None:
    client = fakeredis.FakeRedis()

    def boom() -> dict:
        raise RuntimeError("bug in snapshot")

    assert Heartbeat(client, "w", 1.0, boom).write() is False

    class Down(fakeredis.FakeRedis):
        def pipeline(self, *a, **k):  # type: ignore[no-untyped-def, override]
            raise redis.ConnectionError("redis away")

    hb = Heartbeat(Down(), "w", 1.0, lambda: {})
    assert hb.write() is False and hb.write() is False and hb.beats == 0


def test_heartbeat_thread_beats_and_stop_removes_the_key() -> None:
    client = fakeredis.FakeRedis()
    hb = Heartbeat(client, "w", 0.05, lambda: {"ok": True})
    hb.start()
    import time

    deadline = time.monotonic() + 5
    while hb.beats < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hb.beats >= 3
    hb.stop()
    assert client.get(keys.worker_heartbeat("w")) is None
    assert client.smembers(keys.WORKERS) == set()  # a clean stop is not a missing worker


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((1, 5, 10))
    for v in (0.5, 1, 3, 7, 20):
        h.observe(v)
    snap = h.snapshot()
    assert snap["buckets"] == [[1, 2], [5, 3], [10, 4]]
    assert snap["count"] == 5 and snap["sum"] == 31.5


def test_model_stats_counts_by_status() -> None:
    s = ModelStats()
    s.record_batch(3)
    s.record_results(
        [
            {"status": "ok", "timings_ms": {"inference": 2.0}},
            {"status": "error", "timings_ms": {}},
            {"status": "expired", "timings_ms": {"queue": 40.0}},
        ]
    )
    snap = s.snapshot()
    assert (snap["frames"], snap["ok"], snap["errors"], snap["expired"]) == (3, 1, 1, 1)
    assert snap["batch_sizes"] == {"3": 1}
    assert snap["timings_ms"]["inference"]["count"] == 1 and "decode" not in snap["timings_ms"]
