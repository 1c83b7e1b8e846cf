"""The monitor as ``framepool monitor`` runs it, plus CPU accounting: ``python -m benchmarks.monitor_serve``.

The app is :func:`monitoring.app.create_app` under uvicorn with its real poll loop
(Settings from the environment: ``REDIS_URL``, ``MONITOR_PORT`` ...). Two hooks
count CPU time without changing what runs:

- ``MonitorState.refresh`` (``ClusterReader.read`` and the alert rules, in the
  poller's worker thread) and ``monitoring.responses.stream_message`` (the WebSocket
  message, in the event loop), each with ``time.thread_time`` around the call;
- ``GET /_bench/cpu`` answers ``time.process_time()`` (every thread of the process)
  with those sums and the number of polls, so the benchmark can split the
  process's CPU into poll, stream message and the rest (scrapes, uvicorn);
- ``gc.callbacks`` sum the time spent in the cyclic garbage collector, whichever
  of those it interrupted.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from framepool.log import configure_logging
from framepool.settings import Settings
from monitoring import responses
from monitoring.app import configure_gc, create_app

CPU_PATH = "/_bench/cpu"


def _timed(fn: Callable[..., Any], totals: dict[str, float], key: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] += time.thread_time() - t0

    return wrapper


def _count_gc(totals: dict[str, float]) -> None:
    """``totals["gc_s"]``: CPU time in the cyclic garbage collector (part of the others)."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.thread_time())
        elif started:
            totals["gc_s"] += time.thread_time() - started.pop()

    gc.callbacks.append(callback)


def main() -> None:
    settings = Settings()
    configure_logging(settings)
    totals = {"poll_s": 0.0, "stream_s": 0.0, "gc_s": 0.0}
    _count_gc(totals)
    responses.stream_message = _timed(responses.stream_message, totals, "stream_s")
    app = create_app(settings)
    state = app.state.monitor
    state.refresh = _timed(state.refresh, totals, "poll_s")

    @app.get(CPU_PATH, include_in_schema=False)
    def cpu() -> dict[str, Any]:
        return {"process_s": time.process_time(), "polls": state.polls, **totals}

    configure_gc()  # as `framepool monitor` does

    uvicorn.run(
        app, host="127.0.0.1", port=settings.monitor_port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
