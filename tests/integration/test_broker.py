"""framepool's kombu Redis transport against a real Redis: one synchronous client per pool,
and the unacked-index write after the hand-over to Celery."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.transport import redis as kombu_redis

from framepool.broker import TRANSPORT


def test_channel_reuses_one_client_per_pool_and_still_publishes_and_acks(redis_url: str) -> None:
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first  # kombu's own builds one per call
        with channel.conn_or_acquire() as client:
            assert client is first

        queue = Queue("fp.test.broker", Exchange("fp.test.broker"), "fp.test.broker")
        producer = Producer(channel)
        for i in range(3):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key="fp.test.broker",
                             declare=[queue], serializer="json")  # fmt: skip
        got = []
        for _ in range(3):
            message = queue(channel).get(no_ack=False)
            assert message is not None
            got.append(message.payload["i"])
            message.ack()
        assert sorted(got) == [0, 1, 2]
        assert first.hlen(channel.unacked_key) == 0  # acked through the shared client

        channel._disconnect_pools()  # what kombu does when the connection is lost
        fresh = channel._create_client()
        assert fresh is not first and fresh.connection_pool is channel.pool
        assert fresh.ping()


QUEUE = "fp.test.deferred"


def _publish(channel: Any, n: int = 1) -> Queue:
    queue = Queue(QUEUE, Exchange(QUEUE), QUEUE)
    producer = Producer(channel)
    for i in range(n):
        producer.publish({"i": i}, exchange=queue.exchange, routing_key=QUEUE,
                         declare=[queue], serializer="json")  # fmt: skip
    return queue


def _consume_one(conn: Connection, queue: Queue, on_message: Callable[[Any], None]) -> None:
    got: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        got.append(message)
        on_message(message)

    with Consumer(conn.default_channel, queues=[queue], callbacks=[callback]):
        conn.drain_events(timeout=5)
    assert len(got) == 1


def _indices(channel: Any) -> tuple[int, int]:
    client = channel._create_client()
    return client.zcard(channel.unacked_index_key), client.hlen(channel.unacked_key)


def test_the_unacked_entry_is_written_after_the_message_is_handed_over(redis_url: str) -> None:
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel)
        seen: list[tuple[int, int]] = []
        _consume_one(conn, queue, lambda message: seen.append(_indices(channel)))
        assert seen == [(0, 0)]  # not yet while Celery's callback runs...
        assert _indices(channel) == (1, 1)  # ...but right after it
        (message,) = channel.qos._delivered.values()
        message.ack()
        assert _indices(channel) == (0, 0)
        assert channel._create_client().llen(QUEUE) == 0


def test_an_ack_before_the_write_leaves_nothing_behind(redis_url: str) -> None:
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel)
        _consume_one(conn, queue, lambda message: message.ack())  # what -P solo does
        assert _indices(channel) == (0, 0)  # no stale entry to redeliver later
        assert channel._create_client().llen(QUEUE) == 0
        assert not channel.qos._unwritten


def test_a_requeue_before_the_write_puts_the_message_back(redis_url: str) -> None:
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel)
        _consume_one(conn, queue, lambda message: message.reject(requeue=True))
        assert _indices(channel) == (0, 0)
        client = channel._create_client()
        (raw,) = client.lrange(QUEUE, 0, -1)
        payload = json.loads(raw)
        assert payload["headers"]["redelivered"] is True
        assert json.loads(base64.b64decode(payload["body"])) == {"i": 0}


def test_an_ack_during_the_write_waits_for_it(redis_url: str, monkeypatch: Any) -> None:
    writing, go = threading.Event(), threading.Event()
    kombu_write = kombu_redis.QoS.append

    def slow_write(self: Any, message: Any, tag: Any) -> None:
        writing.set()
        assert go.wait(5)
        kombu_write(self, message, tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", slow_write)
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel)
        acked = threading.Event()

        def ack_from_a_pool_thread(message: Any) -> None:
            def ack() -> None:
                assert writing.wait(5)
                message.ack()
                acked.set()

            threading.Thread(target=ack, daemon=True).start()

        consumer = threading.Thread(target=_consume_one, args=(conn, queue, ack_from_a_pool_thread))
        consumer.start()
        try:
            assert writing.wait(5)
            assert not acked.wait(0.3)  # the ack waits for the entry it removes
        finally:
            go.set()
            consumer.join(5)
        assert acked.wait(5)
        assert _indices(channel) == (0, 0)


def test_a_failed_write_is_restored_from_memory_when_the_channel_closes(
    redis_url: str, monkeypatch: Any
) -> None:
    def lost(self: Any, message: Any, tag: Any) -> None:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(kombu_redis.QoS, "append", lost)
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel)
        with pytest.raises(ConnectionError):
            _consume_one(conn, queue, lambda message: None)
        assert _indices(channel) == (0, 0)  # never written...
        channel.qos.restore_unacked()
        assert channel._create_client().llen(QUEUE) == 1  # ...yet not lost
