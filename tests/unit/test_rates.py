"""Model throughput and recent latency between heartbeats, not between monitor polls."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from monitoring.rates import RateTracker, delta_hist


def hist(values: list[float], bounds: tuple[float, ...] = (1, 5, 10, 50)) -> dict[str, Any]:
    return {
        "buckets": [[b, sum(1 for v in values if v <= b)] for b in bounds],
        "sum": sum(values),
        "count": len(values),
    }


def snap(*workers: tuple[str, float, int, list[float]]) -> Any:
    return SimpleNamespace(
        workers=[
            SimpleNamespace(
                name=name,
                updated_at=at,
                models={"m": {"stats": {"frames": frames, "timings_ms": {"total": hist(lat)}}}},
            )
            for name, at, frames, lat in workers
        ]
    )


def test_rates_come_from_consecutive_heartbeats_of_each_worker() -> None:
    t = RateTracker()
    t.update(snap(("w1", 100.0, 0, [])))
    assert t.model("m")["frames_per_s"] is None  # one heartbeat: no rate yet
    t.update(snap(("w1", 105.0, 50, [2.0] * 50)))
    assert t.model("m")["frames_per_s"] == 10.0
    # the monitor polls again before the next heartbeat: the rate holds, not 0
    t.update(snap(("w1", 105.0, 50, [2.0] * 50)))
    assert t.model("m")["frames_per_s"] == 10.0
    # a second worker adds its own rate; latency quantiles come from the recent frames only
    t.update(snap(("w1", 110.0, 100, [2.0] * 50 + [40.0] * 50), ("w2", 50.0, 0, [])))
    t.update(snap(("w1", 110.0, 100, [2.0] * 50 + [40.0] * 50), ("w2", 55.0, 25, [2.0] * 25)))
    r = t.model("m")
    assert r["frames_per_s"] == 15.0
    assert r["p99_ms"] is not None and r["p99_ms"] > 10  # w1's recent frames were slow
    # a worker that is gone no longer counts
    t.update(snap(("w2", 60.0, 50, [2.0] * 50)))
    assert t.model("m")["frames_per_s"] == 5.0


def test_delta_hist_subtracts_and_survives_a_restart() -> None:
    before, now = hist([1.0, 7.0]), hist([1.0, 7.0, 30.0])
    d = delta_hist(now, before)
    assert d is not None and d["count"] == 1 and d["buckets"] == [[1, 0], [5, 0], [10, 0], [50, 1]]
    assert delta_hist(hist([1.0]), hist([1.0, 2.0])) == hist([1.0])  # counters went down: restart
