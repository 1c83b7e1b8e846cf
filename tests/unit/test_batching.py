"""The batching policy, on a plain queue: no Celery, no torch."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import pytest

from workers.batching import STOP, Chore, collect_batch, split_expired


@dataclass
class Item:
    n: int
    deadline_at: float | None = None


class SpyQueue(queue.Queue):
    """Records every blocking ``get`` that waits with a timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.timed_waits: list[float] = []

    def get(self, block: bool = True, timeout: float | None = None):  # type: ignore[override]
        if block and timeout is not None:
            self.timed_waits.append(timeout)
        return super().get(block, timeout)


def filled(*items: object) -> SpyQueue:
    q = SpyQueue()
    for it in items:
        q.put(it)
    return q


def test_lone_frame_with_nothing_incoming_runs_at_once() -> None:
    q = filled(Item(1))
    batch = collect_batch(q, max_batch_size=8, timeout_s=30.0, incoming=lambda: 0)
    assert batch is not None and [i.n for i in batch.items] == [1]
    assert q.timed_waits == []  # never waited for company


def test_takes_everything_already_queued_up_to_the_cap() -> None:
    q = filled(*(Item(i) for i in range(10)))
    batch = collect_batch(q, max_batch_size=4, timeout_s=30.0)
    assert batch is not None and [i.n for i in batch.items] == [0, 1, 2, 3]
    assert q.qsize() == 6 and q.timed_waits == []
    nxt = collect_batch(q, max_batch_size=4, timeout_s=30.0)
    assert nxt is not None and [i.n for i in nxt.items] == [4, 5, 6, 7]


def test_waits_for_frames_that_are_on_their_way() -> None:
    q = filled(Item(1))
    pending = [Item(2), Item(3)]

    def arrive() -> None:
        for it in pending:
            q.put(it)

    timer = threading.Timer(0.05, arrive)
    timer.start()
    batch = collect_batch(q, max_batch_size=3, timeout_s=10.0, incoming=lambda: len(pending))
    timer.join()
    assert batch is not None and [i.n for i in batch.items] == [1, 2, 3]
    assert q.timed_waits  # it did wait


def test_gives_up_after_the_timeout_when_nothing_comes() -> None:
    q = filled(Item(1))
    batch = collect_batch(q, max_batch_size=8, timeout_s=0.02, incoming=lambda: 5)
    assert batch is not None and [i.n for i in batch.items] == [1]
    assert all(t <= 0.02 for t in q.timed_waits)


def test_expired_frames_are_split_out_when_the_batch_forms() -> None:
    q = filled(Item(1, deadline_at=99.0), Item(2, deadline_at=101.0), Item(3))
    batch = collect_batch(q, max_batch_size=8, timeout_s=0.0, clock=lambda: 100.0)
    assert batch is not None
    assert [i.n for i in batch.items] == [2, 3]
    assert [i.n for i in batch.expired] == [1]
    assert batch.formed_at == 100.0


def test_stop_sentinel_drains_what_is_queued_then_ends() -> None:
    q = filled(Item(1), STOP, Item(2))
    batch = collect_batch(q, max_batch_size=8, timeout_s=0.0)
    assert batch is not None and [i.n for i in batch.items] == [1]
    rest = collect_batch(q, max_batch_size=8, timeout_s=0.0)  # nothing queued is dropped
    assert rest is not None and [i.n for i in rest.items] == [2]
    assert collect_batch(q, max_batch_size=8, timeout_s=0.0) is None


def test_stop_on_an_empty_queue() -> None:
    assert collect_batch(filled(STOP), max_batch_size=2, timeout_s=1.0) is None


def test_a_chore_is_run_by_the_collecting_thread_and_the_frame_it_queues_is_batched() -> None:
    q = SpyQueue()
    ran_in: list[str] = []

    def intake() -> None:  # what the worker hands an idle runner: a frame's intake
        ran_in.append(threading.current_thread().name)
        q.put(Item(7))

    q.put(Chore(intake))
    box: list[object] = []
    t = threading.Thread(target=lambda: box.append(
        collect_batch(q, max_batch_size=8, timeout_s=30.0)), name="collector")  # fmt: skip
    t.start()
    t.join(5)
    batch = box[0]
    assert ran_in == ["collector"]
    assert batch is not None and [i.n for i in batch.items] == [7]  # type: ignore[attr-defined]
    assert q.timed_waits == []


def test_a_chore_read_while_a_batch_forms_runs_there_and_is_not_batched() -> None:
    q = filled(Item(1))
    q.put(Chore(lambda: q.put(Item(2))))
    q.put(Item(3))
    batch = collect_batch(q, max_batch_size=8, timeout_s=0.0)
    assert batch is not None and [i.n for i in batch.items] == [1, 3, 2]
    assert q.empty()


def test_a_chore_that_queues_nothing_leaves_the_collector_waiting_for_a_frame() -> None:
    q = filled(Chore(lambda: None), Chore(lambda: None), Item(5))
    batch = collect_batch(q, max_batch_size=8, timeout_s=0.0)
    assert batch is not None and [i.n for i in batch.items] == [5]


def test_split_expired_keeps_order_and_frames_without_deadline() -> None:
    items = [Item(1, 5.0), Item(2), Item(3, 20.0), Item(4, 9.9)]
    live, expired = split_expired(items, now=10.0)
    assert [i.n for i in live] == [2, 3]
    assert [i.n for i in expired] == [1, 4]


def test_invalid_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        collect_batch(filled(Item(1)), max_batch_size=0, timeout_s=0.0)
