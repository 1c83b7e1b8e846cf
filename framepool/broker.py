"""kombu's Redis transport, with one fix for surviving a Redis restart.

When the broker connection drops, Celery closes the consumer's channel, and
closing a kombu Redis channel restores its unacknowledged messages. By then
kombu has already let go of the connection (``connection.client`` is ``None``),
so the restore raises ``AttributeError``; Celery reports an "Unrecoverable
error" and the worker stops consuming for good (the kombu issues #582/#970
family). Here the restore is skipped when the connection is gone: those
messages stay in Redis's unacked set (Redis holds it, with AOF on disk) and the
periodic sweep delivers them again after ``VISIBILITY_TIMEOUT_SECONDS``, while
the worker reconnects and goes on.

``celeryconfig`` selects this transport with ``broker_transport``; the broker
URL stays a plain ``redis://`` (or ``rediss://``) URL.
"""

from __future__ import annotations

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
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
