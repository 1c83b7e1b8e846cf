"""kombu's Redis transport, with one fix for surviving a Redis restart and one for speed.

When the broker connection drops, Celery closes the consumer's channel, and
closing a kombu Redis channel restores its unacknowledged messages. By then
kombu has already let go of the connection (``connection.client`` is ``None``),
so the restore raises ``AttributeError``; Celery reports an "Unrecoverable
error" and the worker stops consuming for good (the kombu issues #582/#970
family). Here the restore is skipped when the connection is gone
(:class:`~framepool.broker_qos.QoS`, in ``framepool/broker_qos.py``): those
messages stay in Redis's unacked set (Redis holds it, with AOF on disk) and the
periodic sweep delivers them again after ``VISIBILITY_TIMEOUT_SECONDS``, while
the worker reconnects and goes on.

Also, for speed: after each BRPOP the consumer makes one Lua call
(:meth:`Channel._deliver_with_more`) that writes the BRPOP'd message's
unacked-index entry, and takes up to ``MULTI_POP`` more messages from the same
list with their entries written in the same step, within the prefetch limit. The
call is sent before the BRPOP'd message is handed to Celery and read after, so
its round trip overlaps Celery's work and the task's start:
under load one round trip brings many frames, and a message popped by the script
is never out of the list without its unacked entry (a worker killed mid-call
loses nothing; the sweep restores them). The same call reads each message's
claim-checked frame, the BRPOP'd one's included (:data:`PREFETCHED`, so the task
needs no GET of its own: a lone frame costs the worker BRPOP, this call and its
result's write), and the worker's result write removes the frames' unacked
entries (:func:`~framepool.broker_qos.entries_for`), so their acks need no round
trip either. Also: the synchronous Redis client is built once per connection
pool instead of once per command (:class:`Channel`), and the unacked index is
written and acked with plain pipelines instead of MULTI/EXEC
(:meth:`~framepool.broker_qos.QoS.pipe_or_acquire`). With ``multi_pop = 0`` (one
message per BRPOP, as kombu) a delivery's unacked-index write happens just after
the message is handed to Celery (:meth:`Channel.basic_consume`), and the task
reads its frame itself.

``celeryconfig`` selects this transport with ``broker_transport``; the broker
URL stays a plain ``redis://`` (or ``rediss://``) URL.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from framepool import keys
from framepool.broker_qos import QoS
from framepool.log import get_logger

log = get_logger(__name__)

#: what ``broker_transport`` names
TRANSPORT = "framepool.broker:Transport"

#: most messages the consumer takes after each BRPOP, in one round trip
MULTI_POP = 31

#: KEYS: the list, kombu's unacked hash, its index; ARGV: how many, now (s), the
#: claim-check key prefix ('' for none), and optionally a message already popped
#: (BRPOP's). That message, then up to ARGV[1] more RPOP'd ones: each that names its
#: delivery tag, exchange and routing key gets its unacked entry (kombu's [message,
#: exchange, routing_key] JSON: the message's own bytes, not re-encoded) and index
#: score, as QoS.append writes them; the frame its task will read (prefix .. task
#: id) comes back with it. Returns {message, 1 if its entry was written else 0,
#: frame or nil} in that order.
POP_MANY = """
local out = {}
local function take(item)
  local ok, msg = pcall(cjson.decode, item)
  local tag, ex, rk
  if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
    tag = msg.properties.delivery_tag
    local info = msg.properties.delivery_info
    if type(info) == 'table' then
      ex, rk = info.exchange, info.routing_key
    end
  end
  local written = 0
  if type(tag) == 'string' and type(ex) == 'string' and type(rk) == 'string' then
    redis.call('ZADD', KEYS[3], ARGV[2], tag)
    redis.call('HSET', KEYS[2], tag, '[' .. item .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
    written = 1
  end
  local frame = false
  if ARGV[3] ~= '' and ok and type(msg) == 'table' and type(msg.headers) == 'table'
      and type(msg.headers.id) == 'string' then
    frame = redis.call('GET', ARGV[3] .. msg.headers.id)
  end
  out[#out + 1] = {item, written, frame}
end
if ARGV[4] then take(ARGV[4]) end
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOP', KEYS[1])
  if not item then break end
  take(item)
end
return out
"""


class FramePrefetch:
    """Claim-checked frames read with their messages (:data:`POP_MANY`), by job id, until
    their task takes them; at most ``max_bytes`` held, the oldest dropped first (a
    task whose frame is not here reads it from Redis, as without the prefetch)."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._frames: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._coming: dict[str, threading.Event] = {}  # job id -> set when its call is back

    def put(self, job_id: str, data: bytes) -> None:
        with self._lock:
            old = self._frames.pop(job_id, None)
            self._bytes += len(data) - (len(old) if old is not None else 0)
            self._frames[job_id] = data
            while self._bytes > self.max_bytes and self._frames:
                self._bytes -= len(self._frames.popitem(last=False)[1])

    def expect(self, job_id: str) -> None:
        """A call that reads ``job_id``'s frame is in flight: a :meth:`take` waits for it."""
        with self._lock:
            self._coming[job_id] = threading.Event()

    def arrived(self, job_id: str, data: bytes | None) -> None:
        """The call for ``job_id`` is back with its frame (None: no frame, or it failed)."""
        if data is not None:
            self.put(job_id, data)
        with self._lock:
            coming = self._coming.pop(job_id, None)
        if coming is not None:
            coming.set()

    def take(self, job_id: str, wait_s: float = 0.0) -> bytes | None:
        """``job_id``'s frame, once; when a call for it is in flight, after up to
        ``wait_s`` for it to come back."""
        with self._lock:
            coming = self._coming.get(job_id)
        if coming is not None and wait_s > 0:
            coming.wait(wait_s)
        with self._lock:
            data = self._frames.pop(job_id, None)
            if data is not None:
                self._bytes -= len(data)
            return data

    def __len__(self) -> int:
        return len(self._frames)


#: this process's prefetched frames (``FrameIntake._claim``, workers/intake.py, takes them first)
PREFETCHED = FramePrefetch()

_capturing = threading.local()


@contextmanager
def captured_publishes() -> Iterator[list[tuple[str, bytes]]]:
    """Within it, what this thread publishes to a queue on this transport is not sent:
    each message's Redis list and encoded bytes, exactly as kombu would LPUSH them,
    are appended to the list it yields, in order, for the caller to push itself (the
    producer does, in one Lua call with its depth check: ``producer/enqueue.py``)."""
    if getattr(_capturing, "sent", None) is not None:
        raise RuntimeError("captured_publishes does not nest")
    sent: list[tuple[str, bytes]] = []
    _capturing.sent = sent
    try:
        yield sent
    finally:
        _capturing.sent = None


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
    _pop_sha: tuple[Any, str] | None = None  # (client, sha) of POP_MANY, loaded once
    #: most messages taken after each BRPOP in one round trip (0: one per BRPOP, as kombu)
    multi_pop = MULTI_POP
    #: claim-checked frames are read with their messages ('' reads none)
    frame_prefix = keys.frame_data("")

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """kombu's LPUSH of a message onto ``queue``'s list, or, inside
        :func:`captured_publishes`, its list and bytes handed to the caller instead
        (framepool declares no expiring queues, so there is no PEXPIRE to go with it)."""
        sent = getattr(_capturing, "sent", None)
        if sent is None:
            return super()._put(queue, message, **kwargs)
        pri = self._get_message_priority(message, reverse=False)
        sent.append((self._q_for_pri(queue, pri), dumps(message).encode()))
        return None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client

    def basic_consume(
        self,
        queue: str,
        no_ack: bool,
        callback: Callable[[Any], Any],
        consumer_tag: str,
        **kwargs: Any,
    ) -> Any:
        """kombu registers each message (:meth:`QoS.append`, now local) and calls
        ``callback``; the unacked-index write follows the callback (Celery has then
        handed the task to the pool), off the path between BRPOP and the task's start."""
        if no_ack:
            return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

        def then_write_unacked(message: Any) -> Any:
            try:
                return callback(message)
            finally:
                self.qos.write_unacked(message, message.delivery_tag)

        return super().basic_consume(queue, no_ack, then_write_unacked, consumer_tag, **kwargs)

    def _brpop_read(self, **options: Any) -> bool:
        """kombu's: read BRPOP's reply and deliver its message; with :attr:`multi_pop`,
        after one call that writes its unacked entry, reads its frame and takes more
        from the same list (:meth:`_deliver_with_more`)."""
        try:
            try:
                dest_item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # a broken connection: disconnect, so the next poll reconnects
                self.client.connection.disconnect()
                raise
            if not dest_item:
                raise Empty()
            key, item = dest_item
            dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            if not self.multi_pop:
                self.connection._deliver(loads(bytes_to_str(item)), dest)
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.6
            if flush is not None:
                flush()
        if self.multi_pop:
            self._deliver_with_more(key, dest, item)
        return True

    def _deliver_with_more(self, key: bytes, queue: str, first: bytes) -> None:
        """Deliver BRPOP's message ``first`` and up to :attr:`multi_pop` more from list
        ``key`` (the prefetch limit permitting), with one Lua call (:data:`POP_MANY`)
        that writes their unacked entries and reads their claim-checked frames.

        The call is sent before ``first`` is handed to Celery and read after: its round
        trip overlaps Celery's work on ``first`` and the task's start (the task waits
        for its frame in :data:`PREFETCHED`), and Redis has the entry's write before
        any command of the task. When the call cannot be sent, ``first`` is delivered
        as kombu delivers it (its entry written after the hand-over, its frame read by
        its task); when its reply is lost, ``first``'s entry is written again and its
        task reads its frame itself, and any message the call popped stays in the
        unacked set, where the sweep finds it after VISIBILITY_TIMEOUT_SECONDS."""
        n = self.multi_pop
        room = self.qos.can_consume_max_estimate()
        if room is not None:
            n = min(n, room - 1)  # ``first`` takes one place
        payload = loads(bytes_to_str(first))
        try:
            client, conn = self._send_pop(key, max(0, n), first)
        except Exception as exc:  # Redis away
            log.warning("multi_pop_failed", queue=queue, error=f"{type(exc).__name__}: {exc}")
            self.connection._deliver(payload, queue)
            return
        tag = _indexable_tag(payload)
        job = (payload.get("headers") or {}).get("id") if self.frame_prefix else None
        job = job if isinstance(job, str) else None
        if tag is not None:
            self.qos.written_on_pop(tag)  # the call writes it
        if job is not None:
            PREFETCHED.expect(job)
        try:
            self.connection._deliver(payload, queue)
        finally:
            popped = self._read_pop(client, conn, queue)
            if job is not None:
                PREFETCHED.arrived(job, popped[0][2] if popped else None)
            if tag is not None and not (popped and popped[0][1]):
                self.qos.rewrite(tag)  # not written by the call after all
            for item, written, frame in popped[1:]:
                more = loads(bytes_to_str(item))
                if written:
                    self.qos.written_on_pop(more["properties"]["delivery_tag"])
                if frame is not None:
                    PREFETCHED.put(more["headers"]["id"], frame)
                self.connection._deliver(more, queue)

    def _send_pop(self, key: bytes, n: int, first: bytes) -> tuple[Any, Any]:
        """Send :data:`POP_MANY` for ``first`` and up to ``n`` more, without waiting for
        the reply: (client, connection) for :meth:`_read_pop`."""
        client = self._create_client()
        if self._pop_sha is None or self._pop_sha[0] is not client:
            self._pop_sha = (client, client.script_load(POP_MANY))
        conn = client.connection_pool.get_connection()
        try:
            conn.send_command("EVALSHA", self._pop_sha[1], 3, key, self.unacked_key,
                              self.unacked_index_key, n, time.time(), self.frame_prefix,
                              first)  # fmt: skip
        except BaseException:
            conn.disconnect()
            client.connection_pool.release(conn)
            raise
        return client, conn

    def _read_pop(self, client: Any, conn: Any, queue: str) -> list[Any]:
        """The reply of :meth:`_send_pop`: ``[message, written, frame]`` per message,
        BRPOP's first; [] when it failed (logged)."""
        try:
            return list(client.parse_response(conn, "EVALSHA"))
        except Exception as exc:
            if not isinstance(exc, redis.ResponseError):
                conn.disconnect()  # a reply half read or lost: not reusable
            if isinstance(exc, redis.exceptions.NoScriptError):
                self._pop_sha = None  # Redis restarted: loaded again next time
            log.warning("multi_pop_failed", queue=queue, error=f"{type(exc).__name__}: {exc}")
            return []
        finally:
            client.connection_pool.release(conn)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and not no_ack:
            self.qos.write_unacked(message, message.delivery_tag)
        return message


def _indexable_tag(payload: Any) -> str | None:
    """The delivery tag :data:`POP_MANY` writes an unacked entry for (it names its tag,
    exchange and routing key as strings), else None."""
    props = payload.get("properties") if isinstance(payload, dict) else None
    if not isinstance(props, dict):
        return None
    tag, info = props.get("delivery_tag"), props.get("delivery_info")
    if not isinstance(tag, str) or not isinstance(info, dict):
        return None
    if isinstance(info.get("exchange"), str) and isinstance(info.get("routing_key"), str):
        return tag
    return None


class Transport(kombu_redis.Transport):
    Channel = Channel
