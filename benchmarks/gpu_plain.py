"""``bench gpu``'s clients for plain Celery: ``bench.infer`` per frame, from threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.peers_clients import PeerClient, Reply, run_closed
from benchmarks.pipeline import plain_value
from benchmarks.producer_procs import shares


class PlainInferPeer:
    """``bench.infer`` per frame with ``apply_async``; each result read back."""

    name = "plain_celery"

    def __init__(self, redis_url: str, jpegs: Sequence[bytes]) -> None:
        from benchmarks.plain_celery import INFER_TASK, make_app

        self.app = make_app(redis_url)
        self.task = self.app.tasks[INFER_TASK]
        self.jpegs = jpegs

    def submit(self, indices: Sequence[int]) -> list[Any]:
        from benchmarks.plain_celery import INFER_QUEUE

        k = len(self.jpegs)
        return [self.task.apply_async((self.jpegs[i % k], time.time()), queue=INFER_QUEUE)
                for i in indices]  # fmt: skip

    def get(self, handle: Any, timeout: float) -> Reply | None:
        value = plain_value(handle, timeout)
        return None if value is None else Reply.from_dict(value)

    def close(self) -> None:
        self.app.close()


def run_clients(clients: Sequence[PeerClient], n: int, chunk: int) -> tuple[list[Reply], float]:
    """``n`` frames shared by ``clients``, each in a thread of its own with
    ``chunk``..``2*chunk`` outstanding; all replies and the wall time."""
    share = shares(n, len(clients))
    out: list[tuple[list[Reply], float] | BaseException] = [ValueError("not run")] * len(clients)

    def one(k: int) -> None:
        try:
            out[k] = run_closed(clients[k], share[k], chunk)
        except BaseException as exc:  # re-raised below
            out[k] = exc

    threads = [
        threading.Thread(target=one, args=(k,), name=f"client-{k}") for k in range(len(clients))
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    replies: list[Reply] = []
    for o in out:
        if isinstance(o, BaseException):
            raise o
        replies.extend(o[0])
    return replies, wall
