"""framepool's kombu Redis transport against a real Redis: one synchronous client per pool."""

from __future__ import annotations

from kombu import Connection, Exchange, Producer, Queue

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
