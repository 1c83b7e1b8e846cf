"""Per-kernel profiling of sampled batches with ``torch.profiler``.

:class:`BatchProfiler` picks batches (every ``every_n``, plus on demand), runs
them under the profiler and folds ``prof.key_averages()`` into a
:class:`KernelTable`. CPU rows use *self* CPU time, so nested ops are not counted
twice; CUDA rows are the kernels, with their device time.

torch allows one profiler per process: a batch that finds it busy (another
runner thread) or cannot start it runs unprofiled. Profiling never fails a
batch and never runs its body twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import torch

from framepool.log import get_logger

log = get_logger(__name__)

SortKey = Literal["total_time", "avg_time", "calls"]
_SORT_FIELDS = {"total_time": "total_time_ms", "avg_time": "avg_time_ms", "calls": "total_calls"}
_MB = 1024.0 * 1024.0
_SKIP_NAMES = ("[memory]",)  # the profiler's pseudo-event for untracked allocations
_PROFILER_LOCK = threading.Lock()  # torch.profiler: one active profiler per process
_EMA_ALPHA = 0.2
# (time attributes, memory attributes) per device; torch renamed cuda_* to device_*
_ATTRS = {
    "cuda": (
        ("self_device_time_total", "self_cuda_time_total"),
        ("self_device_memory_usage", "self_cuda_memory_usage"),
    ),
    "cpu": (("self_cpu_time_total",), ("self_cpu_memory_usage",)),
}


@dataclass(slots=True)
class _Row:
    last: datetime
    calls: int = 0
    time_ms: float = 0.0
    memory_mb: float = 0.0


class KernelTable:
    """Thread-safe totals per (name, device_type), bounded to ``max_names`` rows.

    When a new name would exceed the cap, the row with the least total time is
    dropped (possibly the new one), so the table keeps the heaviest names.
    ``version`` goes up with every change of the rows (the heartbeat republishes
    the table only when it moved).
    """

    def __init__(self, max_names: int = 500) -> None:
        if max_names < 1:
            raise ValueError("max_names must be >= 1")
        self.max_names = max_names
        self.dropped = 0  # rows evicted by the cap
        self.version = 0  # bumped by every add() that changed a row
        self._rows: dict[tuple[str, str], _Row] = {}
        self._lock = threading.Lock()

    def add(
        self,
        name: str,
        device_type: str,
        calls: int,
        time_ms: float,
        memory_mb: float,
        at: datetime,
    ) -> None:
        """Add ``calls`` executions taking ``time_ms`` and ``memory_mb`` in total.

        A naive ``at`` is taken to be UTC.
        """
        if calls <= 0:
            return
        with self._lock:
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
            row = self._rows.setdefault((name, device_type), _Row(at))
            row.calls, row.time_ms = row.calls + calls, row.time_ms + time_ms
            row.memory_mb += memory_mb
            row.last = max(row.last, at)
            self.version += 1
            if len(self._rows) > self.max_names:
                lightest = min(self._rows, key=lambda k: self._rows[k].time_ms)
                del self._rows[lightest]
                self.dropped += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every row as a dict, heaviest total time first."""
        with self._lock:
            out: list[dict[str, Any]] = [
                {
                    "name": name,
                    "device_type": device_type,
                    "total_calls": r.calls,
                    "avg_time_ms": r.time_ms / r.calls,
                    "total_time_ms": r.time_ms,
                    "avg_memory_mb": r.memory_mb / r.calls,
                    "last_execution": r.last.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                for (name, device_type), r in self._rows.items()
            ]
        out.sort(key=lambda d: d["total_time_ms"], reverse=True)
        return out

    def top(
        self, n: int, sort_by: SortKey = "total_time", min_calls: int = 1
    ) -> list[dict[str, Any]]:
        """The ``n`` rows with the highest ``sort_by`` among those with ``min_calls`` calls."""
        field = _SORT_FIELDS.get(sort_by)
        if field is None:
            raise ValueError(f"sort_by must be one of {sorted(_SORT_FIELDS)}, not {sort_by!r}")
        rows = [r for r in self.snapshot() if r["total_calls"] >= min_calls]
        rows.sort(key=lambda d: d[field], reverse=True)
        return rows[: max(0, n)]


def _first_attr(obj: Any, *names: str) -> float:
    """The first of ``names`` that ``obj`` has, as a float; 0.0 when none."""
    return next((float(v) for n in names if (v := getattr(obj, n, None)) is not None), 0.0)


def _is_device_event(evt: Any) -> bool:
    device = getattr(evt, "device_type", None)
    return device is not None and getattr(device, "name", str(device)).upper().endswith("CUDA")


def fold_key_averages(events: Any, table: KernelTable, at: datetime) -> int:
    """Add ``prof.key_averages()`` rows to ``table``; returns the rows added.

    CPU ops: self CPU time (µs) and self CPU memory (bytes, frees count as 0).
    CUDA kernels: self device time and self device memory.
    """
    added = 0
    for evt in events:
        name = str(getattr(evt, "key", ""))
        calls = int(getattr(evt, "count", 0) or 0)
        if not name or name in _SKIP_NAMES or calls <= 0:
            continue
        device_type = "cuda" if _is_device_event(evt) else "cpu"
        time_attrs, mem_attrs = _ATTRS[device_type]
        us, mem = _first_attr(evt, *time_attrs), _first_attr(evt, *mem_attrs)
        table.add(name, device_type, calls, us / 1000.0, max(0.0, mem) / _MB, at)
        added += 1
    return added


class BatchProfiler:
    """Chooses batches to profile, profiles them, and measures its own cost.

    ``should_profile()`` is called once per batch by the runner thread;
    ``request(n)`` may come from any thread. ``clock`` gives unix time for the
    rows' ``last_execution``; ``timer`` measures durations. Overhead is the wall
    time of a profiled batch (profiler start and stop included) minus the moving
    average of unprofiled batches reported with ``record_batch_ms``.
    """

    def __init__(
        self,
        every_n: int,
        table: KernelTable | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if every_n < 0:
            raise ValueError("every_n must be >= 0 (0 = only on demand)")
        self.every_n = every_n
        self.table = table if table is not None else KernelTable()
        self._clock, self._timer = clock, timer
        self._lock = threading.Lock()
        self._batches = self._pending = self._profiled = self._skipped = 0
        self._baseline_ms: float | None = None  # EMA of unprofiled batches
        self._overhead_ms = self._fold_ms = 0.0
        self._overhead_n = 0

    def request(self, n: int = 1) -> int:
        """Profile the next ``n`` batches as well; returns how many are pending."""
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._pending += n
            return self._pending

    def should_profile(self) -> bool:
        """Call once per batch: whether this batch runs under the profiler."""
        with self._lock:
            self._batches += 1
            if self._pending > 0:
                self._pending -= 1
                return True
            return self.every_n > 0 and self._batches % self.every_n == 0

    def record_batch_ms(self, ms: float) -> None:
        """Report the duration of a batch that ran without the profiler."""
        with self._lock:
            prev = self._baseline_ms
            self._baseline_ms = ms if prev is None else prev + _EMA_ALPHA * (ms - prev)

    @contextmanager
    def profile(self, device_type: str) -> Iterator[None]:
        """Run the body under ``torch.profiler`` and fold the results into the table.

        An exception from the body propagates and leaves the table untouched.
        """
        if not _PROFILER_LOCK.acquire(blocking=False):
            self._skip("profiler_busy")
            yield
            return
        try:
            t0 = self._timer()
            prof = self._guarded("profiler_start_failed", lambda: _new_profiler(device_type))
            try:
                yield
            finally:
                if prof is not None and not self._guarded(
                    "profiler_stop_failed", lambda: prof.__exit__(None, None, None) or True
                ):
                    prof = None
            if prof is not None:
                self._fold(prof, wall_ms=(self._timer() - t0) * 1000.0)
        finally:
            _PROFILER_LOCK.release()

    def warm_up(self, device_type: str = "cpu") -> float | None:
        """Start and stop one empty profiler session, outside any batch; returns its ms.

        torch's first profiler session in a process costs about a second (Kineto
        start-up); call this when the runner starts so no batch pays for it.
        None when the profiler is busy or fails (logged).
        """
        if not _PROFILER_LOCK.acquire(blocking=False):
            return None
        try:
            t0 = self._timer()
            _new_profiler(device_type).__exit__(None, None, None)
            return (self._timer() - t0) * 1000.0
        except Exception as exc:
            log.warning("profile_warm_up_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        finally:
            _PROFILER_LOCK.release()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            n, m = self._overhead_n, self._profiled
            return {
                "profiled_batches": m,
                "skipped_batches": self._skipped,
                "pending_on_demand": self._pending,
                "every_n": self.every_n,
                "overhead_ms_avg": self._overhead_ms / n if n else None,
                "fold_ms_avg": self._fold_ms / m if m else None,
            }

    def _guarded(self, reason: str, step: Callable[[], Any]) -> Any:
        """``step()``, or None with a warning when it raises: profiling never fails a batch."""
        try:
            return step()
        except Exception as exc:
            self._skip(reason, f"{type(exc).__name__}: {exc}")
            return None

    def _skip(self, reason: str, error: str | None = None) -> None:
        with self._lock:
            self._skipped += 1
        log.warning("profile_skipped", reason=reason, error=error)

    def _fold(self, prof: Any, wall_ms: float) -> None:
        t0 = self._timer()
        at = datetime.fromtimestamp(self._clock(), UTC)
        rows = self._guarded(
            "profile_fold_failed", lambda: fold_key_averages(prof.key_averages(), self.table, at)
        )
        if rows is None:
            return
        fold_ms = (self._timer() - t0) * 1000.0
        with self._lock:
            self._profiled += 1
            self._fold_ms += fold_ms
            if self._baseline_ms is not None:
                self._overhead_ms += wall_ms - self._baseline_ms
                self._overhead_n += 1
        log.debug("profile_folded", rows=rows, wall_ms=round(wall_ms, 3), fold_ms=round(fold_ms, 3))


def _new_profiler(device_type: str) -> Any:
    """A started ``torch.profiler.profile`` (CPU, plus CUDA for a cuda device)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device_type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=activities, profile_memory=True, record_shapes=False)
    return prof.__enter__()
