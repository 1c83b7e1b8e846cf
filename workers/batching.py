"""The batching policy: pure logic, no Celery, no torch.

:func:`collect_batch` takes frames from a plain queue and forms one batch:

- it blocks for the first frame (``None`` on the stop sentinel);
- it takes every frame already waiting, up to ``max_batch_size``;
- it waits for more only while ``incoming()`` says frames are on their way
  (received by the worker but not yet queued here), and never past
  ``timeout_s`` after the first frame: a lone frame with nothing else queued
  runs at once;
- frames whose deadline has passed by the time the batch is formed are split
  out as expired and never reach the model;
- a :class:`Chore` on the queue is run at once by the collecting thread, and is
  not part of the batch: the worker hands a frame's intake to an idle model's
  runner this way, and the frame that the chore queues joins the batch.

It is called again as soon as the model is free, so under load frames pile up
while a batch runs and the next batch is formed from all of them at once.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class HasDeadline(Protocol):
    @property
    def deadline_at(self) -> float | None: ...


T = TypeVar("T", bound=HasDeadline)

STOP = object()  # put this on the queue to end the loop


class Chore:
    """Work for the collecting thread itself: run when read, never batched."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn


@dataclass(slots=True)
class Batch(Generic[T]):
    items: list[T] = field(default_factory=list)
    expired: list[T] = field(default_factory=list)
    formed_at: float = 0.0


def split_expired(items: list[T], now: float) -> tuple[list[T], list[T]]:
    """(live, expired): a frame expires when ``now`` is past its deadline."""
    live: list[T] = []
    expired: list[T] = []
    for item in items:
        d = item.deadline_at
        (expired if d is not None and now > d else live).append(item)
    return live, expired


def collect_batch(
    q: queue.Queue[T | object],
    *,
    max_batch_size: int,
    timeout_s: float,
    incoming: Callable[[], int] = lambda: 0,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> Batch[T] | None:
    """Form the next batch from ``q``; ``None`` once the stop sentinel is read."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    first = q.get()
    while isinstance(first, Chore):
        first.fn()
        first = q.get()
    if first is STOP:
        return None
    items: list[T] = [first]  # type: ignore[list-item]
    give_up = monotonic() + timeout_s
    stopping = False
    while len(items) < max_batch_size:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            remaining = give_up - monotonic()
            if remaining <= 0 or incoming() <= 0:
                break
            try:
                nxt = q.get(timeout=remaining)
            except queue.Empty:
                break
        if nxt is STOP:
            stopping = True
            break
        if isinstance(nxt, Chore):
            nxt.fn()  # the frame it queues is read on the next turn
            continue
        items.append(nxt)  # type: ignore[arg-type]
    if stopping:
        q.put(STOP)  # finish this batch, stop on the next call
    now = clock()
    live, expired = split_expired(items, now)
    return Batch(items=live, expired=expired, formed_at=now)
