"""The client side of ``framepool bench peers``: one small interface for every system.

A client sends frames by index (``submit``) and reads one reply at a time
(``get``, ``None`` on timeout), so the same two drivers measure every system:
:func:`run_closed` (saturation: 32-64 frames outstanding,
:func:`benchmarks.harness.closed_loop`) and :func:`run_open` (a fixed schedule
from several cameras, :func:`benchmarks.sweep_cameras.drive`: a slow reply never
delays the next frame). Each :class:`Reply` carries the server's completion
stamp, the forward pass's time and the batch size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from benchmarks.harness import closed_loop
from benchmarks.sandbox import BenchError
from benchmarks.sweep_cameras import drive
from framepool.errors import ResultTimeout
from framepool.settings import Settings

RESULT_TIMEOUT = 120.0  # s: a reply must come within this


@dataclass(frozen=True)
class Reply:
    """One frame's answer, as every system reports it."""

    completed_at: float  # server clock (time.time()) when its batch was done
    inference_ms: float  # the forward pass of its batch
    batch_size: int
    added_ms: float | None = None  # framepool: (completed - enqueued) - inference
    postprocess_ms: float = 0.0  # between the forward pass's end and completed_at
    sent_at: float | None = None  # client clock (time.time()) at the send; open loop only

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reply:
        return cls(
            float(d["completed_at"]),
            float(d["inference_ms"]),
            int(d["batch_size"]),
            postprocess_ms=float(d.get("postprocess_ms", 0.0)),
        )

    @property
    def forward_span(self) -> tuple[float, float]:
        """When its batch's forward pass ran (server clock, s)."""
        end = self.completed_at - self.postprocess_ms / 1000.0
        return end - self.inference_ms / 1000.0, end


class PeerClient(Protocol):
    name: str

    def submit(self, indices: Sequence[int]) -> list[Any]: ...

    def get(self, handle: Any, timeout: float) -> Reply | None: ...

    def close(self) -> None: ...


def run_closed(client: PeerClient, n: int, chunk: int = 32) -> tuple[list[Reply], float]:
    """``n`` frames with ``chunk``..``2*chunk`` outstanding; replies in order, wall s."""

    def submit(start: int, count: int) -> list[Any]:
        return client.submit(range(start, start + count))

    def read(handle: Any) -> Reply:
        reply = client.get(handle, RESULT_TIMEOUT)
        if reply is None:
            raise BenchError(f"{client.name}: no reply within {RESULT_TIMEOUT:.0f}s")
        return reply

    return closed_loop(n, submit, read, chunk)


def run_open(
    client: PeerClient, times: Sequence[float]
) -> tuple[list[tuple[int, Reply, float]], float]:
    """Frame ``i`` sent at ``times[i]`` s from the start; ``(i, reply, send-to-reply ms)``
    in order and the largest lateness of a send (s). Each reply carries its send's
    wall-clock time (``sent_at``), to set against the servers' stamps."""

    def submit(indices: list[int]) -> list[tuple[Any, float]]:
        sent = time.time()
        return [(h, sent) for h in client.submit(indices)]

    def get(handle: tuple[Any, float], timeout: float) -> Reply | None:
        reply = client.get(handle[0], timeout)
        return None if reply is None else dataclasses.replace(reply, sent_at=handle[1])

    return drive(times, submit, get)


# ------------------------------------------------------------------ asyncio bridge
class AsyncBridge:
    """An asyncio loop in a daemon thread, for the clients that are asyncio-only."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="peers-aio", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @staticmethod
    def result(fut: concurrent.futures.Future[Any], timeout: float) -> Any:
        """The coroutine's value, or None when it is not done within ``timeout`` s."""
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            return None

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


# ------------------------------------------------------------------ framepool
class FramepoolPeer:
    """framepool: ``FrameProducer.submit_many`` to a real worker, ``FrameHandle.get``."""

    name = "framepool"

    def __init__(self, settings: Settings, model_id: str, jpegs: Sequence[bytes]) -> None:
        from producer import FrameProducer

        self.producer = FrameProducer(settings)
        self.model_id = model_id
        self.jpegs = jpegs
        self.camera_of: Sequence[int] = ()  # frame index -> camera, for open-loop runs

    def submit(self, indices: Sequence[int]) -> list[Any]:
        k, cams = len(self.jpegs), self.camera_of
        items = [
            {
                "model_id": self.model_id,
                "frame": self.jpegs[i % k],
                "camera_id": f"cam-{cams[i] if i < len(cams) else 0:03d}",
                "seq": i,
            }
            for i in indices
        ]
        return self.producer.submit_many(items)

    def get(self, handle: Any, timeout: float) -> Reply | None:
        try:
            r = handle.get(timeout=timeout)
        except ResultTimeout:
            return None
        if not r.ok:
            raise BenchError(f"framepool frame {handle.seq}: {r.status} {r.error}")
        t = r.timings_ms
        added = (r.completed_at - r.enqueued_at) * 1000.0 - t.inference
        return Reply(r.completed_at, t.inference, r.batch_size, added_ms=added,
                     postprocess_ms=t.postprocess)  # fmt: skip

    def close(self) -> None:
        self.producer.close()


# ------------------------------------------------------------------ the direct call
class DirectPeer:
    """The camera app calling the model itself: frames go into an in-process queue and
    one model thread runs whatever is waiting (up to the batch cap) at once, without
    waiting for more. The model is loaded in the caller's thread, run in this one.
    With ``replicas`` > 1, that many model threads take from the same queue, each
    its own batches (one loaded model; torch threads as set when they start)."""

    name = "direct"

    def __init__(self, service: Callable[[list[bytes]], list[dict[str, Any]]],
                 jpegs: Sequence[bytes], max_batch: int, replicas: int = 1) -> None:  # fmt: skip
        self.service = service
        self.jpegs = jpegs
        self.max_batch = max_batch
        self.inbox: queue.Queue[tuple[bytes, concurrent.futures.Future[Reply]] | None]
        self.inbox = queue.Queue()
        self.threads = [
            threading.Thread(target=self._serve, name=f"direct-model-{i}", daemon=True)
            for i in range(replicas)
        ]
        for t in self.threads:
            t.start()

    def _serve(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                self.inbox.put(None)  # for the other model threads
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.inbox.put(None)
                    break
                batch.append(nxt)
            try:
                replies = self.service([frame for frame, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), value in zip(batch, replies, strict=True):
                fut.set_result(Reply.from_dict(value))

    def submit(self, indices: Sequence[int]) -> list[Any]:
        k = len(self.jpegs)
        futs = []
        for i in indices:
            fut: concurrent.futures.Future[Reply] = concurrent.futures.Future()
            self.inbox.put((self.jpegs[i % k], fut))
            futs.append(fut)
        return futs

    def get(self, handle: Any, timeout: float) -> Reply | None:
        reply: Reply | None = AsyncBridge.result(handle, timeout)
        return reply

    def close(self) -> None:
        self.inbox.put(None)  # each model thread puts it back for the next
        for t in self.threads:
            t.join(10)


# ------------------------------------------------------------------ CPU accounting
def session_pids(sid: int) -> list[int]:
    """The processes in session ``sid`` (a sandbox child and everything it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            if int(fields[3]) == sid:  # fields: state ppid pgrp session ...
                pids.append(int(entry.name))
    return sorted(pids)


def kill_session(sid: int, grace: float = 5.0) -> None:
    """SIGTERM every process left in session ``sid``, SIGKILL what is left after ``grace`` s.

    A sandbox child is stopped by signalling its process group; Ray's and Triton's
    own children can sit in other groups of the same session and outlive it."""
    pids = [p for p in session_pids(sid) if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [p for p in session_pids(sid) if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
