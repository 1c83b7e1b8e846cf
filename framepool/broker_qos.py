"""The consumer's unacknowledged messages: the QoS of framepool's Redis transport.

kombu's Redis QoS keeps each delivered message in an unacked hash and index in
Redis until it is acked. :class:`QoS` changes when and how: the index entry is
written after Celery has taken the message (or by the multi-pop script as it
pops), with plain pipelines; restores, acks and rejects that come after the
broker connection is gone are left to Redis's sweep; and the worker's result
write can remove the entries of its frames (:func:`entries_for`,
:func:`removed_in_redis`), so their acks are local. :mod:`framepool.broker`'s
``Channel`` uses it.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from framepool.log import get_logger

log = get_logger(__name__)


class QoS(kombu_redis.QoS):
    """Restores, acks and rejects that arrive after the connection is gone are left
    to Redis: the messages stay in its unacked set and are delivered again after
    VISIBILITY_TIMEOUT_SECONDS (a frame that had finished is not written twice).

    A consumed message is registered here (:meth:`append`, local only) before Celery
    sees it, and written to Redis's unacked index (:meth:`write_unacked`) once
    Celery has handed it to the pool. kombu writes first; the window in which a
    killed worker loses a message it has popped (BRPOP to index written) is the
    same round trip either way. A task that acks or rejects before its index
    entry is written (or while it is being written) is handled: an ack before the
    write means nothing is written, a requeue before it puts the message back from
    memory, and one during it waits for the write to land first."""

    _delivered: Any  # an OrderedDict once the QoS exists (kombu declares it None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        #: delivery tag -> None (index not written yet) or an Event (being written)
        self._unwritten: dict[Any, threading.Event | None] = {}
        #: tags whose entry the multi-pop script wrote as it popped them
        self._prewritten: set[Any] = set()
        #: task id -> delivery tag, and back, for the deliveries registered here
        self._tag_of: dict[str, Any] = {}
        self._job_of: dict[Any, str] = {}
        #: tags whose entry the worker removed with the task's result (:func:`entries_for`)
        self._removed: set[Any] = set()
        _CONSUMING.add(self)

    def written_on_pop(self, delivery_tag: Any) -> None:
        """The next delivery of ``delivery_tag`` already has its unacked entry."""
        with self._lock:
            self._prewritten.add(delivery_tag)

    def append(self, message: Any, delivery_tag: Any) -> None:
        job_id = (getattr(message, "headers", None) or {}).get("id")
        with self._lock:
            if delivery_tag in self._prewritten:
                self._prewritten.discard(delivery_tag)
            else:
                self._unwritten[delivery_tag] = None
            if isinstance(job_id, str):
                self._tag_of[job_id] = delivery_tag
                self._job_of[delivery_tag] = job_id
        virtual.QoS.append(self, message, delivery_tag)

    def indexed(self, job_ids: Iterable[str]) -> dict[str, Any]:
        """Delivery tags of ``job_ids`` registered here whose unacked entry is in Redis
        now (written, not being written, not settled)."""
        with self._lock:
            out = {}
            for job_id in job_ids:
                tag = self._tag_of.get(job_id)
                if tag is not None and tag not in self._unwritten and tag not in self._removed:
                    out[job_id] = tag
            return out

    def removed_in_redis(self, tags: Iterable[Any]) -> None:
        """``tags``' unacked entries are gone from Redis (the worker removed them with the
        tasks' results): their ack is local only."""
        with self._lock:
            self._removed.update(t for t in tags if t in self._job_of)

    def _forget(self, delivery_tag: Any) -> bool:
        """Drop ``delivery_tag``'s bookkeeping; True when its entry was removed in Redis."""
        with self._lock:
            job_id = self._job_of.pop(delivery_tag, None)
            if job_id is not None and self._tag_of.get(job_id) == delivery_tag:
                del self._tag_of[job_id]
            if delivery_tag in self._removed:
                self._removed.discard(delivery_tag)
                return True
            return False

    def write_unacked(self, message: Any, delivery_tag: Any) -> None:
        """Write a registered delivery to Redis's unacked index (ZADD + HSET), unless it
        was acked or rejected meanwhile."""
        with self._lock:
            if delivery_tag not in self._unwritten:
                return  # settled before its entry was written: nothing to write
            done = self._unwritten[delivery_tag] = threading.Event()
        written = False
        try:
            kombu_redis.QoS.append(self, message, delivery_tag)  # kombu's write
            written = True
        finally:
            with self._lock:
                if written:
                    del self._unwritten[delivery_tag]
                else:  # still only in memory: a close restores it from there
                    self._unwritten[delivery_tag] = None
            done.set()

    def rewrite(self, delivery_tag: Any) -> None:
        """The call that was to write ``delivery_tag``'s entry as it was delivered did
        not (its reply was lost, or the script could not index it): write it now, as
        for a delivery registered unwritten. Nothing when it was settled meanwhile."""
        with self._lock:
            message = self._delivered.get(delivery_tag)
            if message is None or delivery_tag in self._unwritten:
                return
            self._unwritten[delivery_tag] = None
        try:
            self.write_unacked(message, delivery_tag)
        except Exception as exc:  # still only in memory: a close restores it from there
            log.warning("unacked_write_failed", error=f"{type(exc).__name__}: {exc}")

    def _settle_unwritten(self, delivery_tag: Any) -> bool:
        """True when ``delivery_tag``'s index entry was never written (it never will be
        now); waits for a write in progress to land first."""
        while True:
            with self._lock:
                if delivery_tag not in self._unwritten:
                    return False
                writing = self._unwritten[delivery_tag]
                if writing is None:
                    del self._unwritten[delivery_tag]
                    return True
            writing.wait()  # then look again: a failed write leaves it unwritten

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
        for tag in [t for t in list(self._delivered) if self._settle_unwritten(t)]:
            self._restore_from_memory(self._delivered.pop(tag), client)
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

    def _restore_from_memory(self, message: Any, client: Any = None) -> None:
        """Put back a delivery whose unacked entry was never written (kombu restores from
        that entry, so it would drop the message)."""
        if client is None and self._gone():
            return  # the pool is gone with the connection; the task still runs
        info = message.delivery_info
        with self.channel.conn_or_acquire(client) as conn:
            self.channel._do_restore_message(
                message._raw, info["exchange"], info["routing_key"], conn, leftmost=True
            )

    def ack(self, delivery_tag: Any) -> None:
        removed = self._forget(delivery_tag)
        if removed or self._settle_unwritten(delivery_tag):
            virtual.QoS.ack(self, delivery_tag)  # nothing in Redis to remove
            return
        if self._gone():
            log.warning("ack_deferred", reason="broker connection lost")
            self._delivered.pop(delivery_tag, None)
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        removed = self._forget(delivery_tag)
        if removed or self._settle_unwritten(delivery_tag):
            if requeue:
                self._restore_from_memory(self._delivered[delivery_tag])
            virtual.QoS.ack(self, delivery_tag)
            return
        if self._gone():
            log.warning("reject_deferred", reason="broker connection lost", requeue=requeue)
            self._delivered.pop(delivery_tag, None)
            return
        super().reject(delivery_tag, requeue=requeue)


_CONSUMING: weakref.WeakSet[QoS] = weakref.WeakSet()


def entries_for(job_ids: Iterable[str]) -> tuple[list[str], list[Any], list[tuple[QoS, Any]]]:
    """The unacked entries in Redis of this process's deliveries of ``job_ids``: the
    unacked hash and index keys ([] when none), the delivery tags, and (qos, tag)
    pairs for :func:`removed_in_redis` once a caller has deleted them."""
    pairs: list[tuple[QoS, Any]] = []
    redis_keys: list[str] = []
    wanted = list(job_ids)
    for qos in list(_CONSUMING):
        found = qos.indexed(wanted)
        if not found:
            continue
        keys_here = [qos.channel.unacked_key, qos.channel.unacked_index_key]
        if redis_keys and keys_here != redis_keys:
            continue  # another transport option set: left to the ack
        redis_keys = keys_here
        pairs += [(qos, tag) for tag in found.values()]
    return redis_keys, [tag for _, tag in pairs], pairs


def removed_in_redis(pairs: Iterable[tuple[QoS, Any]]) -> None:
    for qos, tag in pairs:
        qos.removed_in_redis([tag])
