"""The ingest's sender: the hand-off queues its readers fill, and the thread that sends them.

Readers hand each encoded frame to one of two bounded queues, live or finite
(:meth:`IngestSender.hand_off`), so a file waiting for room never holds back a
live camera. The sender thread (:meth:`IngestSender.run`) takes live frames
first, then finite ones while the model's queue holds fewer than
``max_queued``, up to ``batch_size`` frames from any camera, and sends them
with one ``submit_many`` (one Redis round trip), counting each ``sent`` or
``dropped`` by reason. While Redis is away it retries with backoff, keeping
the finite frames and counting the live ones as ``broker_unavailable``. The
threads and the drop reasons are described in :mod:`producer.ingest`.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from framepool.errors import BadFrame, BrokerUnavailable, QueueFull, UnknownModel
from framepool.log import get_logger
from producer.sources.base import Backoff

if TYPE_CHECKING:
    from producer.ingest import CameraStats, IngestConfig, Submitter

log = get_logger(__name__)

_POLL_S = 0.1


@dataclass(slots=True)
class _Pending:
    camera_id: str
    seq: int
    captured_at: float
    data: bytes
    live: bool


class IngestSender:
    """What an :class:`~producer.ingest.Ingest`'s readers hand off, sent in batches."""

    def __init__(
        self,
        producer: Submitter,
        config: IngestConfig,
        stats: dict[str, CameraStats],
        lock: threading.Lock,
        stopping: threading.Event,
        stop_ingest: Callable[[], None],
    ) -> None:
        self.producer, self.config, self.stats = producer, config, stats
        self.settings = producer.settings
        self._lock = lock  # the ingest's: it guards ``stats``
        self._stopping = stopping  # set by the ingest's stop()
        self._stop_ingest = stop_ingest  # a fatal error stops everything
        # two hand-off queues, so a file waiting for room never holds back a live camera
        self._live: queue.Queue[_Pending] = queue.Queue(maxsize=4 * config.batch_size)
        self._finite: queue.Queue[_Pending] = queue.Queue(maxsize=4 * config.batch_size)
        self._wake = threading.Event()  # a reader handed something off
        self._room = 0  # finite frames that may go before the model's queue depth is read again
        self._room_read_at = -math.inf
        self.readers_done = threading.Event()  # set by the ingest once its readers ended
        self.broker_down = threading.Event()
        self.fatal: BaseException | None = None  # what stopped the sender (unknown model ...)

    def hand_off(
        self, camera_id: str, seq: int, captured_at: float, data: bytes, live: bool
    ) -> str | None:
        """Queue an encoded frame for sending; why it was dropped instead, or None. A
        live frame is dropped (``backlog``) when its queue is full; a finite one waits
        for room (``stopped`` when the ingest stops first)."""
        item = _Pending(camera_id, seq, captured_at, data, live)
        if live:
            try:
                self._live.put_nowait(item)
            except queue.Full:
                return "backlog"
            self._wake.set()
            return None
        while not self._stopping.is_set():  # a file waits for room
            with contextlib.suppress(queue.Full):
                self._finite.put(item, timeout=_POLL_S)
                self._wake.set()
                return None
        return "stopped"

    def _next_batch(self) -> list[_Pending]:
        """Live frames first, never held back; then finite ones while the model's queue has room."""
        n = self.config.batch_size
        # when stopping, what is left goes without waiting (at most the hand-off queue)
        finite_ok = not self._finite.empty() and (self._stopping.is_set() or self._has_room())
        batch = _take(self._live, n)
        if finite_ok and len(batch) < n:
            room = n - len(batch) if self._stopping.is_set() else min(n - len(batch), self._room)
            more = _take(self._finite, room)
            self._room -= len(more)
            batch += more
        return batch

    def _has_room(self) -> bool:
        """Room in the model's queue for finite frames (its depth read at most every 20 ms)."""
        now = time.monotonic()
        if self._room <= 0 and now - self._room_read_at >= 0.02:
            limit = min(self.config.max_queued, self.settings.max_queue_depth)
            self._room = limit - self.producer.queue_depth(self.config.model_id)
            self._room_read_at = now
        return self._room > 0

    def _idle(self) -> bool:
        return self._live.empty() and self._finite.empty()

    def run(self) -> None:
        """The sender thread: until the readers are done and nothing is left to send."""
        retry: list[_Pending] = []
        try:
            backoff = Backoff(
                min(0.25, self.config.broker_retry_max_s), self.config.broker_retry_max_s
            )
            while True:
                batch: list[_Pending] = []
                try:
                    self._wake.clear()
                    batch, retry = retry or self._next_batch(), []
                    if not batch:
                        if self.readers_done.is_set() and self._idle():
                            return
                        self._wake.wait(0.02 if not self._finite.empty() else _POLL_S)
                        continue
                    self._send(batch)
                except BrokerUnavailable as exc:
                    retry = self._broker_away(batch, exc, backoff)
                    continue
                if self.broker_down.is_set():
                    self.broker_down.clear()
                    log.info("broker_reconnected", attempts=backoff.attempts)
                backoff.reset()
        except Exception as exc:  # bad input (unknown model ...): stop everything
            self.fatal = exc
            self._stop_ingest()
            self.drain("stopped")

    def _broker_away(
        self, batch: list[_Pending], exc: BrokerUnavailable, backoff: Backoff
    ) -> list[_Pending]:
        """Count the live frames as lost, keep the finite ones, sleep; what to retry."""
        self.broker_down.set()
        delay = backoff.next()
        log.warning(
            "broker_unavailable", attempt=backoff.attempts, retry_in_s=delay, error=str(exc)
        )
        keep = [p for p in batch if not p.live]
        self._count([p for p in batch if p.live], "broker_unavailable")
        if self._stopping.is_set():
            # stopping while Redis is away: what cannot be sent is counted, not waited for
            self._count(keep, "broker_unavailable")
            self.drain("broker_unavailable")
            time.sleep(_POLL_S)
            return []
        self._stopping.wait(delay)
        return keep

    def _count(self, items: list[_Pending], reason: str) -> None:
        with self._lock:
            for p in items:
                self.stats[p.camera_id].dropped[reason] += 1

    def drain(self, reason: str) -> None:
        """Count what is handed off and not sent as dropped for ``reason``."""
        self._count(_take(self._live) + _take(self._finite), reason)

    def _send(self, batch: list[_Pending]) -> None:
        items = [self._item(p) for p in batch]
        try:
            handles = self.producer.submit_many(items)
        except QueueFull as exc:  # reject policy: the refused ones are marked in exc.handles
            handles = getattr(exc, "handles", None) or [exc] * len(items)
        except UnknownModel as exc:
            # submit_many prefixes "item i:" through the type's constructor; keep the original
            raise (exc.__cause__ if isinstance(exc.__cause__, UnknownModel) else exc) from None
        except BadFrame:  # one bad frame refuses the whole batch: send them one by one
            handles = [self._send_one(item) for item in items]
        with self._lock:
            for p, h in zip(batch, handles, strict=True):
                stats = self.stats[p.camera_id]
                if h is None:
                    stats.dropped["bad_frame"] += 1
                elif isinstance(h, QueueFull) or getattr(h, "refused", None) is not None:
                    stats.dropped["queue_full"] += 1
                else:
                    stats.sent += 1

    def _send_one(self, item: dict[str, Any]) -> Any:
        try:
            return self.producer.submit_many([item])[0]
        except QueueFull as exc:
            return exc
        except BadFrame as exc:
            log.warning(
                "frame_refused", camera_id=item["camera_id"], seq=item["seq"], error=str(exc)
            )
            return None

    def _item(self, p: _Pending) -> dict[str, Any]:
        item: dict[str, Any] = {
            "model_id": self.config.model_id,
            "frame": p.data,
            "camera_id": p.camera_id,
            "seq": p.seq,
            "captured_at": p.captured_at,
        }
        if self.config.deadline_ms is not None:
            item["deadline_ms"] = self.config.deadline_ms
        if not p.live:
            item["latest_wins"] = False  # every sampled frame of a file matters
        return item


def _take(q: queue.Queue[_Pending], n: int | None = None) -> list[_Pending]:
    """Up to ``n`` items (all when None) that are in ``q`` now, without waiting."""
    out: list[_Pending] = []
    while n is None or len(out) < n:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            break
    return out
