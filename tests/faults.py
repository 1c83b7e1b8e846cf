"""The fault harness: the ``faulty`` test model's frames, a ledger, waiting.

``faulty`` does what each frame's top-left pixel tells it: run normally, raise
out-of-memory above batch k, raise a sticky CUDA error, be slow, kill its
worker, raise. See tests/fixtures/zoo/faulty/model.py.
"""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis
from PIL import Image

from framepool import keys
from framepool.codec import PNG_SIGNATURE
from framepool.errors import ResultTimeout

FIXTURE_ZOO = Path(__file__).resolve().parent / "fixtures" / "zoo"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "faults"
OK, OOM, STICKY, SLOW, KILL, RAISE = 0, 10, 20, 30, 40, 50

T = TypeVar("T")


#: short enough that a lost frame comes back within seconds
VT = "2"


def worker_env(**extra: str) -> dict[str, str]:
    """A fault test's worker: the fixture zoo, a visibility timeout of :data:`VT`."""
    return {"MODELS_ROOT": str(FIXTURE_ZOO), "VISIBILITY_TIMEOUT_SECONDS": VT, **extra}


def cmd_frame(cmd: int, arg: int = 0) -> bytes:
    """A 32x32 PNG whose top-left pixel carries the command for ``faulty``."""
    img = np.full((32, 32, 3), 128, np.uint8)
    img[0, 0] = (cmd, arg, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(side: int = 20_000) -> bytes:
    """A real 1-bit PNG of side x side pixels (400 M at 20000): ~50 KB on the wire."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = bytes(1 + side // 8)  # filter byte + packed pixels
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def record(row: int, fault: str, **figures: Any) -> None:
    """Save one matrix row's measured figures (tests/artifacts/faults/row-NN.json);
    ``python -m benchmarks.reliability_report`` puts them in docs/reliability.md."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    entry = {"row": row, "fault": fault, "at": time.time(), **figures}
    (ARTIFACTS / f"row-{row:02d}.json").write_text(json.dumps(entry, indent=2) + "\n")


def wait_for(
    fn: Callable[[], T], what: str = "condition", timeout: float = 30.0, every: float = 0.05
) -> T:
    """``fn()``'s first truthy value, polling; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


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

    def figures(self, client: redis.Redis, cameras: Iterable[str]) -> dict[str, Any]:
        """Sent, answered, lost, and stream entries beyond one per job (duplicates)."""
        counts = self.stream_counts(client, cameras)
        return {
            "sent": len(self.sent),
            "answered": len(self.results),
            "lost": len(self.lost),
            "duplicate_stream_entries": sum(n - 1 for n in counts.values() if n > 1),
            "statuses": dict(self.statuses()),
        }

    def statuses(self) -> Counter[str]:
        return Counter(r.status.value for r in self.results.values())
