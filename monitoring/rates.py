"""Throughput and recent latency per model, from consecutive heartbeats of each worker.

A worker's counters only move when it writes a heartbeat (every
``HEARTBEAT_INTERVAL_SECONDS``), while the monitor reads every second. Rates
are therefore taken between two heartbeats of the same worker, over their own
``updated_at`` stamps, and summed over the model's workers: comparing two
monitor snapshots one second apart would read 0 most seconds and five times
the true rate the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from monitoring.cluster import ClusterSnapshot, quantile_ms
from monitoring.histograms import resolve


def delta_hist(now: dict[str, Any] | None, before: dict[str, Any] | None) -> dict[str, Any] | None:
    """The histogram of what happened between two cumulative snapshots of it."""
    if not now:
        return None
    if not before or before.get("count", 0) > now.get("count", 0):
        return now  # first beat, or the worker restarted
    prev = {b: c for b, c in before.get("buckets", [])}
    return {
        "buckets": [[b, c - prev.get(b, 0)] for b, c in now.get("buckets", [])],
        "sum": now.get("sum", 0) - before.get("sum", 0),
        "count": now.get("count", 0) - before.get("count", 0),
    }


def _merge(hists: list[dict[str, Any]]) -> dict[str, Any] | None:
    hists = [h for h in hists if h and h.get("count")]
    if not hists:
        return None
    buckets: dict[float, float] = {}
    for h in hists:
        for b, c in h.get("buckets", []):
            buckets[b] = buckets.get(b, 0) + c
    return {
        "buckets": [[b, c] for b, c in sorted(buckets.items())],
        "sum": sum(h.get("sum", 0) for h in hists),
        "count": sum(h.get("count", 0) for h in hists),
    }


@dataclass
class _Beat:
    at: float
    frames: int
    total: Any  # the heartbeat's histograms as sent (count form resolved when read)
    batches: Any
    bounds: Any  # the model's hist_bounds (count form), or None


class _Rate:
    """The rate between two heartbeats; the histograms of what happened between them are
    computed when first read (a dashboard or an API call), not at every poll."""

    def __init__(self, now: _Beat, before: _Beat) -> None:
        self.frames_per_s = (now.frames - before.frames) / (now.at - before.at)
        self._now, self._before = now, before

    @cached_property
    def total(self) -> dict[str, Any] | None:
        now, before = self._now, self._before
        return delta_hist(resolve(now.total, now.bounds), resolve(before.total, before.bounds))

    @cached_property
    def batches(self) -> dict[str, Any] | None:
        now, before = self._now, self._before
        return delta_hist(resolve(now.batches, now.bounds), resolve(before.batches, before.bounds))


class RateTracker:
    """Keeps each (worker, model)'s last heartbeat and the rate between its last two."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], _Beat] = {}
        self._rates: dict[tuple[str, str], _Rate] = {}
        self._seen: dict[str, Any] = {}  # worker -> the models of its heartbeat taken last

    def update(self, snap: ClusterSnapshot) -> None:
        seen = {w.name: w.models for w in snap.workers}
        for w in snap.workers:
            if self._seen.get(w.name) is w.models:
                continue  # the same heartbeat as before (views of it share its models)
            for model_id, entry in w.models.items():
                key = (w.name, model_id)
                last = self._last.get(key)
                if last is not None and w.updated_at <= last.at:
                    continue  # the same heartbeat as before
                stats = entry.get("stats") or {}
                beat = _Beat(
                    w.updated_at,
                    int(stats.get("frames") or 0),
                    (stats.get("timings_ms") or {}).get("total"),
                    stats.get("batch_size_hist"),
                    stats.get("hist_bounds"),
                )
                if last is not None and beat.frames >= last.frames:
                    self._rates[key] = _Rate(beat, last)
                self._last[key] = beat
        self._seen = seen
        for key in [k for k in self._last if k[1] not in seen.get(k[0], ())]:
            self._last.pop(key, None)
            self._rates.pop(key, None)

    def model(self, model_id: str) -> dict[str, Any]:
        """frames_per_s, p50_ms, p99_ms and batch_size_avg over the model's live workers."""
        rates = [r for (_, m), r in self._rates.items() if m == model_id]
        if not rates:
            return {"frames_per_s": None, "p50_ms": None, "p99_ms": None, "batch_size_avg": None}
        total = _merge([r.total for r in rates if r.total])
        batches = _merge([r.batches for r in rates if r.batches])
        return {
            "frames_per_s": round(sum(r.frames_per_s for r in rates), 2),
            "p50_ms": quantile_ms(total, 0.5) if total else None,
            "p99_ms": quantile_ms(total, 0.99) if total else None,
            "batch_size_avg": (round(batches["sum"] / batches["count"], 2) if batches else None),
        }
