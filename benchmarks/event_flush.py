"""What one flush of a worker's buffered task events costs, on a real Redis.

``python -m benchmarks.event_flush [--flushes 2000] [--frames-per-flush 5]`` builds
Celery's ``EventDispatcher`` on framepool's app and transport (a private
``redis-server``), buffers the three task events of each frame (received, started,
succeeded, with fields as a frame task sends them) and times ``flush()``: one
``task-multi`` message of 3 x ``--frames-per-flush`` events. Prints the median
and p90 µs per flush and per frame. docs/benchmarks.md quotes it (the
`bench profile` section: 486-743 µs per flush of 15 events on a slow machine)
for the orjson encoding that was tried and not kept.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence
from typing import Any

from benchmarks.harness import median, percentile
from benchmarks.sandbox import run_measure
from framepool.celery_app import create_app
from framepool.settings import Settings


def buffer_frame(dispatcher: Any) -> None:
    """The three events of one frame task, into the dispatcher's buffer."""
    tid = uuid.uuid4().hex
    dispatcher.send("task-received", uuid=tid, name="framepool.infer",
                    args=f"frame<jpeg 72KB 640x480> model=noop cam=cam-000 seq=17 cid={tid}",
                    kwargs="{}", root_id=tid, parent_id=None, retries=0, eta=None,
                    expires=None)  # fmt: skip
    dispatcher.send("task-started", uuid=tid)
    dispatcher.send("task-succeeded", uuid=tid, runtime=0.0123,
                    result=f"ok model=noop batch=3 total=98.4ms cid={tid}")  # fmt: skip


def measure(sb: Any, flushes: int, per_flush: int) -> dict[str, Any]:
    app = create_app(Settings(redis_url=sb.redis_url))
    times = []
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname="flush@bench", enabled=True,
                                  buffer_group=["task"], buffer_limit=10**9)  # fmt: skip
        for _ in range(flushes):
            for _ in range(per_flush):
                buffer_frame(d)
            t0 = time.perf_counter()
            d.flush()
            times.append((time.perf_counter() - t0) * 1e6)
        d.close()
    med, p90 = median(times), percentile(times, 90)
    print(f"flush of {3 * per_flush} events: median {med:.0f} µs, p90 {p90:.0f} µs; "
          f"{med / per_flush:.0f} µs per frame")  # fmt: skip
    return {"median_us": med, "p90_us": p90}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--flushes", type=int, default=2000)
    ap.add_argument("--frames-per-flush", type=int, default=5)
    args = ap.parse_args(argv)
    if args.flushes < 1 or args.frames_per_flush < 1:
        ap.error("--flushes and --frames-per-flush must be >= 1")
    res = run_measure(lambda sb: measure(sb, args.flushes, args.frames_per_flush))
    return res if isinstance(res, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
