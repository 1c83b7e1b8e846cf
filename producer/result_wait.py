"""Waiting for a frame's result from any thread, with the timeout the caller gave.

Celery's ``AsyncResult.get(timeout=t)`` polls its pub/sub connection in steps
of one second, so a result that is not ready makes it wait at least a second,
whatever ``t`` is (``get(timeout=0.05)`` returns after ~1.0 s), and threads
sharing the producer's one connection read each other's messages. Here one
reader thread owns a pub/sub connection and wakes exactly the waiter a result
is published for; a waiter subscribes to its job's channel (Celery's result key,
which the worker SETs and PUBLISHes), reads the key once the subscription is
confirmed (a result stored before that is found there), and waits on an event
for the rest of its timeout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from framepool import keys
from framepool.log import get_logger

log = get_logger(__name__)

_IDLE_CHANNEL = f"{keys.PREFIX}:results:listener"


@dataclass(slots=True)
class _Slot:
    done: threading.Event = field(default_factory=threading.Event)
    raw: bytes | None = None


@dataclass(slots=True)
class _Channel:
    """The waiters of one job's channel, and whether Redis confirmed its subscription."""

    subscribed: threading.Event = field(default_factory=threading.Event)
    slots: list[_Slot] = field(default_factory=list)


class ResultListener:
    """``listener.wait(job_id, timeout)``: the job's raw stored Celery result, or None."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pubsub = client.pubsub()
        self._lock = threading.Lock()
        self._waiting: dict[str, _Channel] = {}
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def wait(self, job_id: str, timeout: float | None) -> bytes | None:
        """The stored result of ``job_id`` within ``timeout`` seconds (None: no limit)."""
        key = keys.celery_result(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        stored = self.client.get(key)
        if stored is not None:
            return bytes(stored)
        slot = _Slot()
        self._start()
        with self._lock:
            chan = self._waiting.get(key)
            first = chan is None
            if chan is None:
                chan = self._waiting[key] = _Channel()
            chan.slots.append(slot)
        try:
            if first:
                self.pubsub.subscribe(key)
            # Only once Redis confirms the subscription is a later PUBLISH sure to
            # reach us; a result stored before that is read from the key.
            if chan.subscribed.wait(_left(deadline)) and not slot.done.is_set():
                stored = self.client.get(key)
                if stored is not None:
                    return bytes(stored)
            slot.done.wait(_left(deadline))
            return slot.raw
        finally:
            with self._lock:
                chan.slots.remove(slot)
                last = not chan.slots
                if last:
                    self._waiting.pop(key, None)
            if last:  # (a connection gone took the subscription with it)
                with contextlib.suppress(redis.RedisError):
                    self.pubsub.unsubscribe(key)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):  # closing must not raise
            self.pubsub.close()
        if self._thread is not None:
            self._thread.join(2.0)

    # ------------------------------------------------------------------ reader
    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                # A channel nothing publishes on, held for the listener's life: redis-py's
                # PubSub clears its "subscribed" flag whenever its last channel goes, and a
                # subscribe racing that (from another thread) could leave it cleared while
                # subscribed, with the reader no longer reading.
                self.pubsub.subscribe(_IDLE_CHANNEL)
                self._thread = threading.Thread(
                    target=self._read, name="framepool-results", daemon=True
                )
                self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                msg = self.pubsub.get_message(timeout=0.5)
            except Exception as exc:  # Redis away: waiters time out; redis-py resubscribes
                if self._closed.is_set():
                    return
                log.warning("result_listener_read_failed", error=str(exc))
                time.sleep(0.2)
                continue
            if msg:
                self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        channel = msg.get("channel")
        key = channel.decode() if isinstance(channel, bytes) else str(channel)
        with self._lock:
            chan = self._waiting.get(key)
            slots = list(chan.slots) if chan is not None else []
        kind = msg.get("type")
        if chan is not None and kind == "subscribe":
            chan.subscribed.set()
        elif kind == "message":
            for slot in slots:
                if not slot.done.is_set():
                    slot.raw = msg["data"]
                    slot.done.set()


def decode_with(backend: Any) -> Callable[[bytes], Any]:
    """The task's return value (or its exception) from a stored Celery result.

    Take the backend once, in one thread: Celery's ``app.backend`` is a new backend
    (its own connection pool) in every thread that first asks for it, ~2 ms each."""

    def decode(raw: bytes) -> Any:
        meta = backend.decode_result(raw)
        return meta.get("result")

    return decode


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
