"""Closed- and open-loop clients, each in a process of its own.

One Python process submitting frames with ``FrameProducer`` and reading their
results spends ~0.45 ms of CPU per frame (`bench pipeline`'s CPU table), so it
cannot drive much more than ~2,000 frames/s, fewer with its threads sharing one
GIL: a GPU with several workers outruns it, and a benchmark driven from one
process then measures the producer. The peers' clients (a Ray handle, PyTriton's
client) cost the same order per frame. Here each client is a spawned process
with its own client (:class:`benchmarks.peers_clients.PeerClient`, built by a
picklable ``factory(jpegs)``), as cameras on separate hosts would be; the
processes are started once and reused for every run.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

from benchmarks.peers_clients import FramepoolPeer, PeerClient, Reply, run_closed, run_open

_PEER: PeerClient | None = None  # the client of this process (in the children)

Factory = Callable[[Sequence[bytes]], PeerClient]


def _start(factory: Factory, jpegs: Sequence[bytes]) -> None:
    global _PEER
    _PEER = factory(jpegs)


def _client() -> PeerClient:
    if _PEER is None:
        raise RuntimeError("client process not started")
    return _PEER


def _set_cameras(client: PeerClient, cameras: Sequence[int]) -> None:
    if isinstance(client, FramepoolPeer):
        client.camera_of = cameras


def _run(camera: int, n: int, chunk: int) -> list[Reply]:
    """``n`` frames from camera ``camera`` with ``chunk``..``2*chunk`` outstanding."""
    client = _client()
    _set_cameras(client, [camera] * n)
    replies, _ = run_closed(client, n, chunk)
    return replies


def _run_open(
    sends: Sequence[tuple[int, float, int]], epoch: float
) -> tuple[list[tuple[int, Reply, float]], float]:
    """``sends`` (frame index, time from the start, camera) on schedule from the wall
    clock's ``epoch``; ``(frame index, reply, ms)`` and the largest lateness (s)."""
    client = _client()
    _set_cameras(client, [c for _, _, c in sends])
    time.sleep(max(0.0, epoch - time.time()))
    done, late = run_open(client, [t for _, t, _ in sends])
    return [(sends[i][0], reply, ms) for i, reply, ms in done], late


def framepool_client(
    redis_url: str, max_batch: int, model_id: str, jpegs: Sequence[bytes]
) -> FramepoolPeer:
    from framepool.settings import Settings

    return FramepoolPeer(Settings(redis_url=redis_url, max_batch_size=max_batch), model_id, jpegs)


def shares(n: int, count: int) -> list[int]:
    """``n`` frames split over ``count`` clients as evenly as can be."""
    if count < 1:
        raise ValueError(f"need count >= 1, got {count}")
    return [n // count + (1 if k < n % count else 0) for k in range(count)]


def by_camera(
    schedule: Sequence[tuple[float, int, int]], count: int
) -> list[list[tuple[int, float, int]]]:
    """An open-loop schedule ``(t, camera, seq)`` dealt to ``count`` clients, every
    frame of a camera to the same one (camera ``c`` to client ``c % count``); each
    send as ``(index in the schedule, t, camera)``. Clients without a camera get
    nothing."""
    if count < 1:
        raise ValueError(f"need count >= 1, got {count}")
    out: list[list[tuple[int, float, int]]] = [[] for _ in range(count)]
    for i, (t, camera, _) in enumerate(schedule):
        out[camera % count].append((i, t, camera))
    return out


class ClientProcesses:
    """``count`` processes, each with its own client made by ``factory(jpegs)``."""

    #: the open loop's processes start this long after the schedule is handed out
    OPEN_LEAD_S = 1.0

    def __init__(self, factory: Factory, jpegs: Sequence[bytes], count: int) -> None:
        self.count = count
        self.pool = ProcessPoolExecutor(
            count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(factory, list(jpegs)),
        )

    def run(self, n: int, chunk: int) -> tuple[list[Reply], float]:
        """``n`` frames shared by the processes (camera ``k`` in process ``k``), each
        with ``chunk``..``2*chunk`` outstanding; every reply and the wall time (s)
        until the last one came back."""
        t0 = time.perf_counter()
        futures = [
            self.pool.submit(_run, k, share, chunk)
            for k, share in enumerate(shares(n, self.count))
            if share
        ]
        replies = [r for f in futures for r in f.result()]
        return replies, time.perf_counter() - t0

    def run_open(
        self, schedule: Sequence[tuple[float, int, int]]
    ) -> tuple[list[tuple[int, Reply, float]], float]:
        """The schedule's frames sent on time from the processes (:func:`by_camera`),
        all from one wall-clock start; ``(index, reply, ms)`` in schedule order and the
        largest lateness of a send (s)."""
        epoch = time.time() + self.OPEN_LEAD_S
        futures = [self.pool.submit(_run_open, part, epoch)
                   for part in by_camera(schedule, self.count) if part]  # fmt: skip
        done: list[tuple[int, Reply, float]] = []
        late = 0.0
        for f in futures:
            got, lateness = f.result()
            done.extend(got)
            late = max(late, lateness)
        done.sort(key=lambda d: d[0])
        return done, late

    def warm(self) -> None:
        """Start every process (and its client) now, not in the first measured run."""
        list(self.pool.map(_noop, range(self.count)))

    def pids(self) -> list[int]:
        """The client processes (started by the first run). The executor keeps them
        in ``_processes``, its one record of them (present in every Python 3)."""
        procs = getattr(self.pool, "_processes", None) or {}
        return sorted(p.pid for p in procs.values() if p.pid is not None)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ClientProcesses:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _noop(_: int) -> None:
    _client()
    time.sleep(0.2)  # long enough that the pool hands each call to another process


class ProducerProcesses(ClientProcesses):
    """``count`` processes, each a framepool client (``FrameProducer``) of ``model_id``."""

    def __init__(self, redis_url: str, max_batch: int, model_id: str,
                 jpegs: Sequence[bytes], count: int) -> None:  # fmt: skip
        super().__init__(partial(framepool_client, redis_url, max_batch, model_id), jpegs, count)
