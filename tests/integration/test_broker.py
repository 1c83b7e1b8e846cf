"""framepool's kombu Redis transport against a real Redis: one synchronous client per pool,
and the unacked-index write after the hand-over to Celery."""

from __future__ import annotations

import base64
import json
import threading
import time
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
    """One delivery through BRPOP alone: a message requeued during it would otherwise be
    taken again at once by the multi-pop (tested below on its own)."""
    conn.default_channel.multi_pop = 0
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


# ------------------------------------------------------------------ several per round trip
def _drain(conn: Connection, queue: Queue, prefetch: int | None, n: int) -> list[Any]:
    """Deliveries until ``n`` messages came (or a drain finds nothing); not acked."""
    got: list[Any] = []
    channel = conn.default_channel
    with Consumer(channel, queues=[queue], callbacks=[lambda body, m: got.append(m)]) as c:
        if prefetch:
            c.qos(prefetch_count=prefetch)
        while len(got) < n:
            try:
                conn.drain_events(timeout=2)
            except TimeoutError:
                break
    return got


def test_one_round_trip_brings_several_messages_each_with_its_unacked_entry(
    redis_url: str, monkeypatch: Any
) -> None:
    kombu_writes: list[Any] = []
    kombu_write = kombu_redis.QoS.append

    def counted_write(qos: Any, message: Any, tag: Any) -> None:
        kombu_writes.append(tag)
        kombu_write(qos, message, tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", counted_write)
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel, 10)
        calls: list[int] = []
        real = channel._deliver_with_more

        def counted(key: bytes, name: str, first: bytes) -> None:
            calls.append(1)
            real(key, name, first)

        channel._deliver_with_more = counted  # type: ignore[method-assign]
        got = _drain(conn, queue, None, 10)
        assert sorted(m.payload["i"] for m in got) == list(range(10))
        assert len(calls) == 1  # BRPOP's one, then its entry and the other nine in one call
        assert kombu_writes == []  # no entry is written after the hand-over, BRPOP's neither
        client = channel._create_client()
        assert client.llen(QUEUE) == 0
        assert _indices(channel) == (10, 10)  # every delivery is in the unacked set
        for m in got:
            entry = json.loads(client.hget(channel.unacked_key, m.delivery_tag))
            assert entry[1:] == [QUEUE, QUEUE]  # kombu's [message, exchange, routing key]
            assert entry[0]["properties"]["delivery_tag"] == m.delivery_tag
        assert not channel.qos._unwritten and not channel.qos._prewritten
        for m in got:
            m.ack()
        assert _indices(channel) == (0, 0)


def test_the_prefetch_limit_bounds_what_one_round_trip_takes(redis_url: str) -> None:
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel, 10)
        with Consumer(channel, queues=[queue], callbacks=[lambda body, m: None]) as c:
            c.qos(prefetch_count=4)
            conn.drain_events(timeout=2)
            assert len(channel.qos._delivered) == 4  # BRPOP's one and three more
            assert channel._create_client().llen(QUEUE) == 6
            assert _indices(channel) == (4, 4)


def test_unacked_messages_taken_several_at_a_time_are_restored_on_close(
    redis_url: str,
) -> None:
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel, 6)
        got = _drain(conn, queue, None, 6)
        assert len(got) == 6
        got[0].ack()
        client = channel._create_client()
    # closing the connection restores what was delivered and not acked, from Redis
    assert client.llen(QUEUE) == 5
    assert client.hlen(kombu_redis.Channel.unacked_key) == 0
    bodies = sorted(json.loads(base64.b64decode(json.loads(r)["body"]))["i"]
                    for r in client.lrange(QUEUE, 0, -1))  # fmt: skip
    assert bodies == sorted(m.payload["i"] for m in got[1:])


@pytest.mark.parametrize("index", [0, -1], ids=["multi-popped", "brpopped"])
def test_a_message_the_script_cannot_index_is_delivered_and_written_after(
    redis_url: str, index: int
) -> None:
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel, 2)
        client = channel._create_client()
        first = json.loads(client.lindex(QUEUE, index))  # -1: BRPOP's, 0: the call's
        first["properties"]["delivery_info"]["routing_key"] = None  # not a string: left alone
        client.lset(QUEUE, index, json.dumps(first))
        got = _drain(conn, queue, None, 2)
        assert len(got) == 2
        assert _indices(channel) == (2, 2)  # written by the QoS after the hand-over
        for m in got:
            m.ack()


def test_when_the_call_after_brpop_fails_its_message_is_delivered_as_kombu_does(
    redis_url: str,
) -> None:
    from framepool import broker

    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish(channel, 3)
        channel._pop_sha = None
        real = broker.POP_MANY
        try:
            broker.POP_MANY = "return redis.error_reply('script broken')"
            got = _drain(conn, queue, None, 3)  # one per BRPOP now
        finally:
            broker.POP_MANY = real
        assert sorted(m.payload["i"] for m in got) == [0, 1, 2]
        assert _indices(channel) == (3, 3)  # each written by the QoS after its hand-over
        assert not channel.qos._unwritten and not channel.qos._prewritten
        for m in got:
            m.ack()
        assert _indices(channel) == (0, 0)


def test_claim_checked_frames_come_with_the_messages_taken_several_at_a_time(
    redis_url: str,
) -> None:
    from framepool import keys
    from framepool.broker import PREFETCHED

    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        client = channel._create_client()
        queue = Queue(QUEUE, Exchange(QUEUE), QUEUE)
        producer = Producer(channel)
        for i in range(4):
            job = f"job-{i}"
            if i != 2:  # frame 2 has no claim-checked bytes (sent inline, say)
                client.set(keys.frame_data(job), f"frame-{i}".encode())
            producer.publish({"i": i}, exchange=queue.exchange, routing_key=QUEUE,
                             declare=[queue], serializer="json", headers={"id": job})  # fmt: skip
        got = _drain(conn, queue, None, 4)
        assert [m.headers["id"] for m in got] == ["job-0", "job-1", "job-2", "job-3"]
        # job-0 came through BRPOP, its frame with the rest in the call after it
        assert PREFETCHED.take("job-0") == b"frame-0"
        assert PREFETCHED.take("job-2") is None
        assert PREFETCHED.take("job-1") == b"frame-1"
        assert PREFETCHED.take("job-3") == b"frame-3"
        assert PREFETCHED.take("job-3") is None  # taken once
        assert client.get(keys.frame_data("job-1")) == b"frame-1"  # read, not deleted
        for m in got:
            m.ack()


def test_the_result_write_removes_the_unacked_entries_and_the_ack_stays_local(
    redis_url: str, monkeypatch: Any
) -> None:
    import redis as redis_py

    from framepool.schemas import Status
    from workers.results import FrameRecord, Origin, ResultWriter, build_result

    removals: list[Any] = []
    kombu_remove = kombu_redis.QoS._remove_from_indices

    def counted(qos: Any, tag: Any, pipe: Any = None) -> Any:
        removals.append(tag)
        return kombu_remove(qos, tag, pipe)

    monkeypatch.setattr(kombu_redis.QoS, "_remove_from_indices", counted)
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        queue = Queue(QUEUE, Exchange(QUEUE), QUEUE)
        producer = Producer(channel)
        for i in range(3):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key=QUEUE,
                             declare=[queue], serializer="json", headers={"id": f"r-{i}"})  # fmt: skip
        got = _drain(conn, queue, None, 3)
        assert _indices(channel) == (3, 3)
        writer = ResultWriter(redis_py.Redis.from_url(redis_url), maxlen=100)
        now = time.time()
        meta = {"model_id": "m", "camera_id": None, "seq": 0, "captured_at": now,
                "enqueued_at": now, "deadline_at": None, "format": "jpeg", "width": 1,
                "height": 1}  # fmt: skip
        origin = Origin("w", "cpu", "1")
        results = [build_result(FrameRecord(f"r-{i}", f"r-{i}", dict(meta)), origin, Status.ok)
                   for i in (0, 1)]  # fmt: skip
        assert writer.write(results) == set()
        assert _indices(channel) == (1, 1)  # r-0 and r-1 removed with their results
        remaining = json.loads(channel._create_client().hvals(channel.unacked_key)[0])
        assert remaining[0]["headers"]["id"] == "r-2"
        by_id = {m.headers["id"]: m for m in got}
        by_id["r-0"].ack()
        by_id["r-2"].ack()
        assert removals == [by_id["r-2"].delivery_tag]  # r-0's ack needed no round trip
        by_id["r-1"].reject(requeue=True)  # its entry is gone: put back from memory
        assert _indices(channel) == (0, 0)
        (raw,) = channel._create_client().lrange(QUEUE, 0, -1)
        assert json.loads(raw)["headers"]["id"] == "r-1"
        qos = channel.qos
        assert not qos._removed and not qos._tag_of and not qos._job_of
