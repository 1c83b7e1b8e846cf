"""Worker heartbeats: a JSON snapshot in Redis, rewritten every interval with a TTL.

The monitor (on any host) reads ``framepool:worker:<name>`` for every name in
``framepool:workers``; a key that has expired means the worker is gone. The
snapshot itself is built by the runtime (:meth:`WorkerRuntime.snapshot`); this
module only schedules and writes it, and never lets a failure stop the loop.

Kernel tables (up to 100 profiler rows per model, nine tenths of the bytes) are
not in the heartbeat: they change only when the worker profiles, so they live
under a key of their own, ``framepool:worker:<name>:kernels`` (``keys.worker_kernels``),
``{"worker": name, "stamp": s, "models": {model_id: [rows]}}``, rewritten only
when their stamp moved and otherwise only given the heartbeat's TTL again. The
heartbeat carries ``"kernels": {"stamp": s, "rows": {model_id: n}}``, so a reader
fetches the table only when the stamp it holds is not the heartbeat's (and not at
all while every ``n`` is 0). The snapshot hands the tables over as a
:class:`KernelIndex` in that field. Both keys are written in one pipeline, the
table first, and removed together on a clean stop.

Histograms travel as counts (:func:`wire_stats`): ``{"bounds": "ms", "counts": [...],
"sum": s, "count": n}``, each model's bound lists once under ``stats.hist_bounds``, the
counts stopping where they reach ``n``, rather than ``{"buckets": [[le, count], ...]}``
(a tenth of the JSON values to parse).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from framepool import keys
from framepool.log import get_logger
from workers.stats import BATCH_SIZE_BUCKETS, BUCKETS_MS, FRAME_SIZE_BUCKETS

log = get_logger(__name__)

#: Names of the bounds ``ModelStats`` uses, as a heartbeat's ``hist_bounds`` gives them.
_BOUND_NAMES: dict[tuple[float, ...], str] = {
    tuple(BUCKETS_MS): "ms",
    tuple(BATCH_SIZE_BUCKETS): "batch_size",
    tuple(FRAME_SIZE_BUCKETS): "frame_size_bytes",
}

#: A worker's kernel tables: model id -> ``KernelTable.top()`` rows.
KernelTables = dict[str, list[dict[str, Any]]]


class KernelIndex(dict[str, Any]):
    """The heartbeat's ``kernels`` field: as JSON ``{"stamp": ..., "rows": {model_id: n}}``;
    :attr:`tables` returns the rows themselves, asked only when the stamp moved.

    ``stamp`` must change whenever a table's rows change and differ between two runs
    of a worker (e.g. pid, start time and the tables' summed ``KernelTable.version``).
    """

    def __init__(
        self, stamp: str, rows: Mapping[str, int], tables: Callable[[], KernelTables]
    ) -> None:
        super().__init__(stamp=stamp, rows=dict(rows))
        self.tables = tables

    @property
    def stamp(self) -> str:
        return str(self["stamp"])


def wire_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """``ModelStats.snapshot()`` as a heartbeat sends it: each histogram's cumulative counts
    with its bounds named (``{"bounds": name, "counts": [...], "sum": s, "count": n}``),
    stopping where they reach ``n`` (the bounds past them count ``n``: most of a latency
    histogram's upper buckets), the bound lists once under ``hist_bounds``; every other
    field as it is."""
    used: dict[str, list[float]] = {}

    def counts(hist: Any) -> Any:
        buckets = hist.get("buckets") if isinstance(hist, dict) else None
        if not isinstance(buckets, list):
            return hist
        les = tuple(b for b, _ in buckets)
        name = _BOUND_NAMES.get(les) or next(
            (n for n, known in used.items() if tuple(known) == les), f"b{len(used)}"
        )
        used[name] = list(les)
        total = hist.get("count")
        cumulative = [c for _, c in buckets]
        while cumulative and cumulative[-1] == total:
            cumulative.pop()
        return {"bounds": name, "counts": cumulative, "sum": hist.get("sum"), "count": total}

    out = dict(stats)
    timings = stats.get("timings_ms")
    if isinstance(timings, dict):
        out["timings_ms"] = {stage: counts(h) for stage, h in timings.items()}
    for field in ("batch_size_hist", "frame_size_bytes"):
        if field in stats:
            out[field] = counts(stats[field])
    out["hist_bounds"] = used
    return out


def serving(raw: bytes | str | None) -> bool:
    """Whether a stored heartbeat says its worker consumes: the worker's own state,
    not a model's (a model is "ready" once loaded, before Celery consumes)."""
    if raw is None:
        return False
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("state") == "ready"


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), default=str)


class Heartbeat:
    """Writes ``snapshot()`` to the worker's heartbeat key from a thread of its own."""

    def __init__(
        self,
        client: redis.Redis,
        worker: str,
        interval_s: float,
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        self.client = client
        self.worker = worker
        self.interval_s = interval_s
        self.snapshot = snapshot
        self.key = keys.worker_heartbeat(worker)
        self.kernels_key = keys.worker_kernels(worker)
        self.ttl = keys.heartbeat_ttl(interval_s)
        self.beats = 0
        self.kernel_writes = 0
        self.size = self.kernels_size = 0  # bytes of the last heartbeat, kernel table written
        self._kernels_stamp: str | None = None  # the stamp of the table last written
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def beat_now(self) -> None:
        """Write the next snapshot at once (a state change the monitor should see soon)."""
        self._wake.set()

    def stop(self, state: str = "stopped") -> None:
        """Stop the loop and remove the keys, so the monitor sees the worker leave at once."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(self.interval_s + 5)
        try:  # a clean stop is not a missing worker: leave the set too
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(self.key, self.kernels_key)
            pipe.srem(keys.WORKERS, self.worker)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("heartbeat_delete_failed", error=str(exc), state=state)

    def write(self) -> bool:
        try:
            doc = self.snapshot()
            index = doc.get("kernels")
            index = index if isinstance(index, KernelIndex) else None
            table = None
            if index is not None and index.stamp != self._kernels_stamp:
                table = self._kernel_body(index)
            body = _dumps(doc)
        except Exception:  # a snapshot bug must not stop the heartbeats
            log.exception("heartbeat_snapshot_failed", worker=self.worker)
            return False
        try:
            pipe = self.client.pipeline(transaction=False)
            if table is not None:  # first, so a reader that sees the new stamp finds it
                pipe.set(self.kernels_key, table, ex=self.ttl)
            elif index is not None:
                pipe.expire(self.kernels_key, self.ttl)
            pipe.set(self.key, body, ex=self.ttl)
            pipe.sadd(keys.WORKERS, self.worker)
            replies = pipe.execute()
            if index is not None and table is None and not replies[0]:
                table = self._rewrite_kernels(index)  # the table's key had gone
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("heartbeat_write_failed", worker=self.worker, error=str(exc))
            self._failing = True
            self._kernels_stamp = None  # not known to be there: write it again
            return False
        if self._failing:
            log.info("heartbeat_write_recovered", worker=self.worker)
        self._failing = False
        if table is not None and index is not None:
            self._kernels_stamp = index.stamp
            self.kernel_writes += 1
            self.kernels_size = len(table)
        self.size = len(body)
        self.beats += 1
        return True

    def _kernel_body(self, index: KernelIndex) -> str:
        return _dumps({"worker": self.worker, "stamp": index.stamp, "models": index.tables()})

    def _rewrite_kernels(self, index: KernelIndex) -> str | None:
        """Write the table again (its key expired or was removed); None if it cannot be built."""
        try:
            table = self._kernel_body(index)
        except Exception:
            log.exception("heartbeat_snapshot_failed", worker=self.worker)
            return None
        self.client.set(self.kernels_key, table, ex=self.ttl)
        return table

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.write()
            self._wake.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
            self._wake.clear()
