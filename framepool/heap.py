"""The garbage collector in long-lived framepool processes."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect once, then move everything alive now out of the collector's way.

    What a process builds while it starts (torch, Celery, pydantic, FastAPI and
    their modules: some 250,000 tracked objects in a worker) lives until it exits,
    yet every full collection walked all of it: 30-130 ms with every Python
    thread stopped, the runner's between two layers of a forward pass. A worker
    ran one as Celery started up, with frames already queued for it.
    Frozen (``gc.freeze``), the same collection looks at what was made since
    (docs/benchmarks.md).
    """
    gc.collect()
    gc.freeze()
