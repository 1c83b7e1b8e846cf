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

Also, for speed: after each BRPOP the consumer takes up to ``MULTI_POP`` more
messages from the same list in one Lua call that writes their unacked-index
entries in the same step (:meth:`Channel._deliver_more`), within the prefetch
limit: under load one round trip brings many frames, and a message is never out
of the list without its unacked entry (a worker killed mid-call loses nothing; the
sweep restores them). The same call reads each message's claim-checked frame
(:data:`PREFETCHED`, so the task needs no GET of its own), and the worker's result
write removes the frames' unacked entries
(:func:`~framepool.broker_qos.entries_for`), so their acks need no round trip
either. Also: the synchronous Redis client is built once per connection pool
instead of once per command (:class:`Channel`), the unacked index is written
and acked with plain pipelines instead of MULTI/EXEC
(:meth:`~framepool.broker_qos.QoS.pipe_or_acquire`), and a delivery's
unacked-index write happens just after the message is handed to Celery instead
of just before (:meth:`Channel.basic_consume`), so its round trip overlaps the
task's start instead of delaying it.

``celeryconfig`` selects this transport with ``broker_transport``; the broker
URL stays a plain ``redis://`` (or ``rediss://``) URL.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from framepool import keys
from framepool.broker_qos import QoS
from framepool.log import get_logger

log = get_logger(__name__)

#: what ``broker_transport`` names
TRANSPORT = "framepool.broker:Transport"

#: most messages the consumer takes after each BRPOP, in one round trip
MULTI_POP = 31

#: KEYS: the list, kombu's unacked hash, its index; ARGV: how many, now (s), the
#: claim-check key prefix ('' for none). RPOP up to ARGV[1] messages; each one that
#: names its delivery tag, exchange and routing key gets its unacked entry (kombu's
#: [message, exchange, routing_key] JSON: the message's own bytes, not re-encoded)
#: and index score, as QoS.append writes them; the frame its task will read
#: (prefix .. task id) comes back with it. Returns {message, 1 if its entry was
#: written else 0, frame or nil} in pop order.
POP_MANY = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOP', KEYS[1])
  if not item then break end
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

    def put(self, job_id: str, data: bytes) -> None:
        with self._lock:
            old = self._frames.pop(job_id, None)
            self._bytes += len(data) - (len(old) if old is not None else 0)
            self._frames[job_id] = data
            while self._bytes > self.max_bytes and self._frames:
                self._bytes -= len(self._frames.popitem(last=False)[1])

    def take(self, job_id: str) -> bytes | None:
        with self._lock:
            data = self._frames.pop(job_id, None)
            if data is not None:
                self._bytes -= len(data)
            return data

    def __len__(self) -> int:
        return len(self._frames)


#: this process's prefetched frames (``FrameIntake._claim``, workers/intake.py, takes them first)
PREFETCHED = FramePrefetch()


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
    _pop_script: Any = None
    #: most messages taken after each BRPOP in one round trip (0: one per BRPOP, as kombu)
    multi_pop = MULTI_POP
    #: claim-checked frames are read with their messages ('' reads none)
    frame_prefix = keys.frame_data("")

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
        """kombu's: read BRPOP's reply and deliver its message; then up to
        :attr:`multi_pop` more from the same list (:meth:`_deliver_more`)."""
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
            self.connection._deliver(loads(bytes_to_str(item)), dest)
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.6
            if flush is not None:
                flush()
        self._deliver_more(key, dest)
        return True

    def _deliver_more(self, key: bytes, queue: str) -> None:
        """Pop up to :attr:`multi_pop` more messages from list ``key`` (the prefetch
        limit permitting) with their unacked entries written in the same Lua call,
        and deliver them. A failed call leaves any message it popped in the unacked
        set, where the sweep finds it after VISIBILITY_TIMEOUT_SECONDS."""
        n = self.multi_pop
        room = self.qos.can_consume_max_estimate()
        if room is not None:
            n = min(n, room)
        if n <= 0:
            return
        script_keys = [key, self.unacked_key, self.unacked_index_key]
        try:
            with self.conn_or_acquire() as client:
                script = self._pop_script
                if script is None or script.registered_client is not client:
                    script = self._pop_script = client.register_script(POP_MANY)
                popped = script(
                    keys=script_keys, args=[n, time.time(), self.frame_prefix], client=client
                )
        except Exception as exc:  # Redis away or a script error: BRPOP's message went on
            log.warning("multi_pop_failed", queue=queue, error=f"{type(exc).__name__}: {exc}")
            return
        for item, written, frame in popped:
            payload = loads(bytes_to_str(item))
            if written:
                self.qos.written_on_pop(payload["properties"]["delivery_tag"])
            if frame is not None:
                PREFETCHED.put(payload["headers"]["id"], frame)
            self.connection._deliver(payload, queue)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and not no_ack:
            self.qos.write_unacked(message, message.delivery_tag)
        return message


class Transport(kombu_redis.Transport):
    Channel = Channel
