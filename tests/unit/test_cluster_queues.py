"""ClusterReader's queues on fakeredis: depth, oldest frame's age and drops per model,
the priority sub-lists, a queue head decoded once, and the round trips a read takes.

The queue messages are published by the real ``FrameProducer`` through kombu's
Redis transport on a fakeredis server, or built by hand with ``kombu_message``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import fakeredis
import kombu.transport.redis as kombu_redis
import numpy as np
import pytest

from framepool import codec, keys
from framepool.celery_app import create_app
from framepool.settings import DEFAULT_MODELS_ROOT, Settings
from monitoring.cluster import ClusterReader
from monitoring.queues import enqueued_at
from tests.unit.fake_redis import client as client
from tests.unit.fake_redis import server as server
from tests.unit.test_cluster import (
    NOW,
    Clock,
    heartbeat,
    kombu_message,
    model_entry,
    publish,
    settings,
)


@pytest.fixture()
def producer(server: fakeredis.FakeServer) -> Iterator[Any]:
    """The real FrameProducer, its kombu transport and its Redis client on ``server``."""
    from producer.client import FrameProducer

    original = kombu_redis.Channel._connparams

    def connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        return {**original(self, asynchronous), "connection_class": fakeredis.FakeRedisConnection,
                "server": server}  # fmt: skip

    s = Settings(redis_url="redis://fake:6379/0", models_root=DEFAULT_MODELS_ROOT,
                 max_queue_depth=3, queue_full_policy="drop")  # fmt: skip
    app = create_app(s)
    app.conf.result_backend = "disabled://"
    with mock.patch.object(kombu_redis.Channel, "_connparams", connparams):
        p = FrameProducer(s, app=app)
        p.redis = fakeredis.FakeRedis(server=server)
        yield p
        p.close()


def test_queues_from_real_producer_messages(
    client: fakeredis.FakeRedis, producer: Any, tmp_path: Path
) -> None:
    client.sadd(keys.SERVED_MODELS, "shape_detector")  # a worker serves it
    frame = codec.encode_jpeg(np.zeros((48, 64, 3), np.uint8), quality=80)
    sent_at = time.time()
    producer.submit("shape_detector", frame, camera_id="cam1", seq=1)
    producer.submit_many(
        [{"model_id": "shape_detector", "frame": frame, "seq": i} for i in range(4)]
    )
    raw = client.lindex(keys.queue_name("shape_detector"), -1)
    assert sent_at <= (enqueued_at(raw) or 0) <= time.time()  # a real kombu envelope
    # an older frame at a higher priority, and garbage at another priority
    lists = keys.queue_lists("shape_detector")
    client.lpush(
        lists[1], kombu_message({"model_id": "shape_detector", "enqueued_at": sent_at - 30})
    )
    client.lpush(lists[2], b"garbage", b"\x00\x01")
    client.set(lists[3], "not a list")  # WRONGTYPE for LLEN/LINDEX: ignored
    reader = ClusterReader(client, settings(tmp_path), clock=Clock(sent_at + 5))
    q = reader.read().queues["shape_detector"]
    assert q.queue == keys.queue_name("shape_detector")
    assert q.depth == 3 + 1 + 2  # max_queue_depth=3 let three real frames in
    assert q.dropped == {"queue_full": 2}  # the producer's drop counter
    assert q.oldest_age_s == pytest.approx(35.0, abs=0.01)


def test_queue_of_a_model_only_a_heartbeat_names(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    publish(client, heartbeat("w@h", "h", {"adhoc": model_entry("adhoc", device="cpu")}))
    client.lpush(keys.queue_name("adhoc"), kombu_message({"enqueued_at": NOW - 2.5}))
    client.hset(keys.dropped_counter("adhoc"), mapping={"queue_full": 4, "bad": "x"})
    snap = ClusterReader(client, settings(tmp_path), clock=Clock()).read()
    q = snap.queues["adhoc"]
    assert (q.depth, q.oldest_age_s, q.dropped) == (1, 2.5, {"queue_full": 4})
    assert (
        snap.queues["manifest_only"].depth == 0
        and snap.queues["manifest_only"].oldest_age_s is None
    )


def test_read_takes_three_round_trips_for_40_workers_then_one(tmp_path: Path) -> None:
    executes: list[int | str] = []

    class Counting(fakeredis.FakeRedis):
        fetched_last: list[str] = []

        def mget(self, *a: Any, **k: Any) -> Any:
            executes.append("mget")
            self.fetched_last = sorted(k_.rpartition(":")[2] for k_ in a[0])
            return super().mget(*a, **k)

        def pipeline(self, *a: Any, **k: Any) -> Any:
            pipe = super().pipeline(*a, **k)
            original = pipe.execute

            def execute(*ea: Any, **ek: Any) -> Any:
                executes.append(len(pipe))
                return original(*ea, **ek)

            pipe.execute = execute
            return pipe

    client = Counting()
    models = [f"m{i}" for i in range(5)]
    client.sadd(keys.SERVED_MODELS, *models)
    for i in range(40):
        publish(client, heartbeat(f"w{i}@h", "h", {m: model_entry(m) for m in models}))
    reader = ClusterReader(client, settings(tmp_path), clock=Clock())
    snap = reader.read()
    assert len(snap.workers) == 40 and snap.models["m0"].frames == 40 * 20
    # a new reader: SMEMBERS x2; MGET of the (new) heartbeats; all 4 lists of each model
    assert executes == [2, "mget", 6 * (2 * 4 + 1)]  # 5 served models, 1 manifest
    reader.read()  # SMEMBERS x2, GETRANGE of each heartbeat and the queue commands at once:
    # LLEN, LINDEX of each queue, HGETALL of its drops, one EXISTS of the priority sub-lists
    assert executes[3:] == [2 + 40 + 6 * 3 + 1]  # no heartbeat changed: no MGET
    publish(client, heartbeat("w7@h", "h", {m: model_entry(m) for m in models}, updated_at=NOW))
    publish(client, heartbeat("w40@h", "h", {"m9": model_entry("m9")}))
    snap = reader.read()
    assert len(snap.workers) == 41 and snap.queues["m9"].depth == 0
    # the known ones at once; MGET of the changed and the new heartbeat; a new model's queues
    assert executes[4:] == [2 + 40 + 6 * 3 + 1, "mget", 2 * 4 + 1]
    assert client.fetched_last == ["w40@h", "w7@h"]


def test_priority_sub_lists_are_read_while_they_hold_frames(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    client.sadd(keys.SERVED_MODELS, "m")
    main, sub3, sub6, _ = keys.queue_lists("m")
    client.lpush(main, kombu_message({"enqueued_at": NOW - 2.0}))
    clock = Clock()
    reader = ClusterReader(client, settings(tmp_path), clock=clock)
    assert reader.read().queues["m"].depth == 1
    assert reader.read().queues["m"].oldest_age_s == pytest.approx(2.0)
    client.lpush(sub6, kombu_message({"enqueued_at": NOW - 9.0}), b"garbage")
    q = reader.read().queues["m"]  # EXISTS counted one: read in a second round trip
    assert (q.depth, q.oldest_age_s) == (3, pytest.approx(9.0))
    client.lpush(sub3, kombu_message({"enqueued_at": NOW - 1.0}))
    q = reader.read().queues["m"]  # sub6 read directly now, sub3 found by EXISTS
    assert (q.depth, q.oldest_age_s) == (4, pytest.approx(9.0))
    client.delete(sub6)
    client.rpop(main)
    q = reader.read().queues["m"]
    assert (q.depth, q.oldest_age_s) == (1, pytest.approx(1.0))
    client.delete(sub3)
    q = reader.read().queues["m"]
    assert (q.depth, q.oldest_age_s) == (0, None)
    client.lpush(sub3, kombu_message({"enqueued_at": NOW - 4.0}))
    assert reader.read().queues["m"].oldest_age_s == pytest.approx(4.0)


def test_a_queue_head_is_decoded_once_while_it_stays_the_oldest(
    tmp_path: Path, client: fakeredis.FakeRedis
) -> None:
    client.lpush(keys.queue_name("adhoc"), kombu_message({"enqueued_at": NOW - 2.5}))
    client.sadd(keys.SERVED_MODELS, "adhoc")
    reader = ClusterReader(client, settings(tmp_path), clock=Clock())
    with mock.patch("monitoring.queues.enqueued_at", wraps=enqueued_at) as decode:
        assert reader.read().queues["adhoc"].oldest_age_s == 2.5
        assert reader.read().queues["adhoc"].oldest_age_s == 2.5
        assert decode.call_count == 1
        client.rpop(keys.queue_name("adhoc"))
        client.lpush(keys.queue_name("adhoc"), kombu_message({"enqueued_at": NOW - 1.0}))
        assert reader.read().queues["adhoc"].oldest_age_s == 1.0
        assert decode.call_count == 2
