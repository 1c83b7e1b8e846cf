"""The fault harness: the ``faulty`` test model's frames, a ledger, waiting.

``faulty`` does what each frame's top-left pixel tells it: run normally, raise
out-of-memory above batch k, raise a sticky CUDA error, be slow, kill its
worker, raise. See tests/fixtures/zoo/faulty/model.py.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis
from PIL import Image

from framepool import keys
from framepool.errors import ResultTimeout

FIXTURE_ZOO = Path(__file__).resolve().parent / "fixtures" / "zoo"
OK, OOM, STICKY, SLOW, KILL, RAISE = 0, 10, 20, 30, 40, 50

T = TypeVar("T")


def cmd_frame(cmd: int, arg: int = 0) -> bytes:
    """A 32x32 PNG whose top-left pixel carries the command for ``faulty``."""
    img = np.full((32, 32, 3), 128, np.uint8)
    img[0, 0] = (cmd, arg, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def wait_for(fn: Callable[[], T], timeout: float = 30.0, every: float = 0.1) -> T:
    """``fn()``'s first truthy value, polling; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"condition not met in {timeout}s")


class Ledger:
    """Frames sent, completed and seen on their camera streams, keyed by job_id.

    ``sent`` holds every accepted frame's handle; ``collect`` waits for their
    results; ``stream_counts`` counts each job's stream entries (a duplicate
    execution must not add a second one). A frame is lost when it was accepted
    and never got a result.
    """

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.sent: dict[str, Any] = {}
        self.results: dict[str, Any] = {}

    def send(self, model_id: str, frame: bytes, **kw: Any) -> Any:
        handle = self.producer.submit(model_id, frame, **kw)
        self.sent[handle.job_id] = handle
        return handle

    def collect(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait (up to ``timeout`` overall) for every sent frame's result."""
        deadline = time.monotonic() + timeout
        for job_id, handle in self.sent.items():
            if job_id in self.results:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self.results[job_id] = handle.get(timeout=left)
            except ResultTimeout:
                break
        return self.results

    @property
    def lost(self) -> list[str]:
        return [j for j in self.sent if j not in self.results]

    def stream_counts(self, client: redis.Redis, cameras: Iterable[str]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for camera in cameras:
            for _, fields in client.xrange(keys.result_stream(camera)):
                counts[fields[b"job_id"].decode()] += 1
        return counts

    def diagnose(self, client: redis.Redis, model_id: str) -> str:
        """Where lost frames may be: kombu's unacked index, the queue, the restore lock."""
        return (
            f"lost {len(self.lost)}: unacked {client.zcard('unacked_index')}, "
            f"queued {sum(client.llen(q) for q in keys.queue_lists(model_id))}, "
            f"restore lock ttl {client.ttl('unacked_mutex')}"
        )

    def statuses(self) -> Counter[str]:
        return Counter(r.status.value for r in self.results.values())
