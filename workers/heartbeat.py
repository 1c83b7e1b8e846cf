"""Worker heartbeats: a JSON snapshot in Redis, rewritten every interval with a TTL.

The monitor (on any host) reads ``framepool:worker:<name>`` for every name in
``framepool:workers``; a key that has expired means the worker is gone. The
snapshot itself is built by the runtime (:meth:`WorkerRuntime.snapshot`); this
module only schedules and writes it, and never lets a failure stop the loop.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from framepool import keys
from framepool.log import get_logger

log = get_logger(__name__)


class Heartbeat:
    """Writes ``snapshot()`` to the worker's heartbeat key from a thread of its own."""

    def __init__(
        self,
        client: redis.Redis,
        worker: str,
        interval_s: float,
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        self.client = client
        self.worker = worker
        self.interval_s = interval_s
        self.snapshot = snapshot
        self.key = keys.worker_heartbeat(worker)
        self.ttl = keys.heartbeat_ttl(interval_s)
        self.beats = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def beat_now(self) -> None:
        """Write the next snapshot at once (a state change the monitor should see soon)."""
        self._wake.set()

    def stop(self, state: str = "stopped") -> None:
        """Stop the loop and remove the key, so the monitor sees the worker leave at once."""
        self._stop.set()
        self._wake.set()
        self._thread.join(self.interval_s + 5)
        try:  # a clean stop is not a missing worker: leave the set too
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(self.key)
            pipe.srem(keys.WORKERS, self.worker)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("heartbeat_delete_failed", error=str(exc), state=state)

    def write(self) -> bool:
        try:
            body = json.dumps(self.snapshot(), separators=(",", ":"), default=str)
        except Exception:  # a snapshot bug must not stop the heartbeats
            log.exception("heartbeat_snapshot_failed", worker=self.worker)
            return False
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.key, body, ex=self.ttl)
            pipe.sadd(keys.WORKERS, self.worker)
            pipe.execute()
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("heartbeat_write_failed", worker=self.worker, error=str(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("heartbeat_write_recovered", worker=self.worker)
        self._failing = False
        self.beats += 1
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.write()
            self._wake.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
            self._wake.clear()
