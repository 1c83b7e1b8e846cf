"""Closed-loop framepool producers, each in a process of its own.

One Python process submitting frames with ``FrameProducer`` and reading their
results spends ~0.45 ms of CPU per frame (`bench pipeline`'s CPU table), so it
cannot drive much more than ~2,000 frames/s, fewer with its threads sharing one
GIL: a GPU with several workers outruns it, and a benchmark driven from one
process then measures the producer. Here each client is a spawned process with
its own ``FrameProducer`` (:class:`benchmarks.peers_clients.FramepoolPeer`), as
cameras on separate hosts would be; the processes are started once and reused
for every run.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchmarks.peers_clients import FramepoolPeer, Reply, run_closed

_PEER: FramepoolPeer | None = None  # the client of this process (in the children)


def _start(redis_url: str, max_batch: int, model_id: str, jpegs: Sequence[bytes]) -> None:
    from framepool.settings import Settings

    global _PEER
    _PEER = FramepoolPeer(Settings(redis_url=redis_url, max_batch_size=max_batch), model_id, jpegs)


def _run(camera: int, n: int, chunk: int) -> list[Reply]:
    """``n`` frames from camera ``camera`` with ``chunk``..``2*chunk`` outstanding."""
    if _PEER is None:
        raise RuntimeError("producer process not started")
    _PEER.camera_of = [camera] * n
    replies, _ = run_closed(_PEER, n, chunk)
    return replies


def shares(n: int, count: int) -> list[int]:
    """``n`` frames split over ``count`` clients as evenly as can be."""
    if count < 1:
        raise ValueError(f"need count >= 1, got {count}")
    return [n // count + (1 if k < n % count else 0) for k in range(count)]


class ProducerProcesses:
    """``count`` processes, each a closed-loop framepool client of ``model_id``."""

    def __init__(self, redis_url: str, max_batch: int, model_id: str,
                 jpegs: Sequence[bytes], count: int) -> None:  # fmt: skip
        self.count = count
        self.pool = ProcessPoolExecutor(
            count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(redis_url, max_batch, model_id, list(jpegs)),
        )

    def run(self, n: int, chunk: int) -> tuple[list[Reply], float]:
        """``n`` frames shared by the processes (camera ``k`` in process ``k``); every
        reply and the wall time (s) until the last one came back."""
        t0 = time.perf_counter()
        futures = [
            self.pool.submit(_run, k, share, chunk)
            for k, share in enumerate(shares(n, self.count))
            if share
        ]
        replies = [r for f in futures for r in f.result()]
        return replies, time.perf_counter() - t0

    def pids(self) -> list[int]:
        """The client processes (started by the first :meth:`run`). The executor keeps
        them in ``_processes``, its one record of them (present in every Python 3)."""
        procs = getattr(self.pool, "_processes", None) or {}
        return sorted(p.pid for p in procs.values() if p.pid is not None)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ProducerProcesses:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
