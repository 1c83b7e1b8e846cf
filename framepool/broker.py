"""kombu's Redis transport, with one fix for surviving a Redis restart and one for speed.

When the broker connection drops, Celery closes the consumer's channel, and
closing a kombu Redis channel restores its unacknowledged messages. By then
kombu has already let go of the connection (``connection.client`` is ``None``),
so the restore raises ``AttributeError``; Celery reports an "Unrecoverable
error" and the worker stops consuming for good (the kombu issues #582/#970
family). Here the restore is skipped when the connection is gone: those
messages stay in Redis's unacked set (Redis holds it, with AOF on disk) and the
periodic sweep delivers them again after ``VISIBILITY_TIMEOUT_SECONDS``, while
the worker reconnects and goes on.

Also, for speed: the synchronous Redis client is built once per connection pool
instead of once per command (:class:`Channel`), and the unacked index is written
and acked with plain pipelines instead of MULTI/EXEC (:meth:`QoS.pipe_or_acquire`).

``celeryconfig`` selects this transport with ``broker_transport``; the broker
URL stays a plain ``redis://`` (or ``rediss://``) URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kombu.transport import redis as kombu_redis

from framepool.log import get_logger

log = get_logger(__name__)

#: what ``broker_transport`` names
TRANSPORT = "framepool.broker:Transport"


class QoS(kombu_redis.QoS):
    """Restores, acks and rejects that arrive after the connection is gone are left
    to Redis: the messages stay in its unacked set and are delivered again after
    VISIBILITY_TIMEOUT_SECONDS (a frame that had finished is not written twice)."""

    _delivered: Any  # an OrderedDict once the QoS exists (kombu declares it None)

    @contextlib.contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        """Each delivery's unacked-index write (ZADD + HSET) and its ack (ZREM + HDEL) in
        a plain pipeline, not kombu's MULTI/EXEC: half the replies to read on the
        consumer thread. Nothing needs the pair atomic: the sweep only restores
        entries older than the visibility timeout, and reads a missing hash entry
        as nothing to restore."""
        if pipe is not None:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as conn:
                yield conn.pipeline(transaction=False)

    def _gone(self) -> bool:
        connection = getattr(self.channel, "connection", None)
        return connection is None or connection.client is None

    def restore_unacked(self, client: Any = None) -> Any:
        if client is None and self._gone():
            log.warning(
                "unacked_restore_deferred",
                reason="broker connection lost",
                messages=len(self._delivered),
                note="redelivered after VISIBILITY_TIMEOUT_SECONDS",
            )
            self._delivered.clear()
            return []
        return super().restore_unacked(client)

    def ack(self, delivery_tag: Any) -> None:
        if self._gone():
            log.warning("ack_deferred", reason="broker connection lost")
            self._delivered.pop(delivery_tag, None)
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._gone():
            log.warning("reject_deferred", reason="broker connection lost", requeue=requeue)
            self._delivered.pop(delivery_tag, None)
            return
        super().reject(delivery_tag, requeue=requeue)


class Channel(kombu_redis.Channel):
    """kombu builds a new ``redis.Redis`` for every publish, ack, task event and
    unacked-hash write (``conn_or_acquire`` without a client); redis-py 8 fills a
    200-entry response-callback dict for each, ~0.3 ms of the GIL every time, so
    ~1 ms per frame on a worker's consumer thread. One client per connection
    pool is kept instead (a ``redis.Redis`` is safe to share between threads: each
    command takes a connection from the pool); a new pool (kombu drops its pools
    when the connection is lost) gets a new client."""

    QoS = QoS
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
