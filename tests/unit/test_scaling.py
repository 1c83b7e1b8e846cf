"""The scaling recommendation (formula, tracker, route, gauges) and ``framepool scale``'s choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient

from framepool import keys
from framepool.settings import Settings
from monitoring.alerts import AlertEngine
from monitoring.cluster import ClusterReader, ClusterSnapshot, QueueView
from monitoring.cluster_build import parse_worker
from monitoring.collector import build_families
from monitoring.scaling import (
    ScalingPolicy,
    ScalingTracker,
    consumers,
    plan_consumers,
    recommend,
)
from tests.heartbeats import gpu_heartbeat, model_entry, publish

POLICY = ScalingPolicy(window_s=30.0, target_utilization=0.8, target_queue_age_s=2.0, drain_s=30.0)


# ----------------------------------------------------------------- the formula
def test_recommend_steady_state_keeps_headroom() -> None:
    # 40 frames/s arriving, 20 frames/s per worker, at most 80 % busy: 2.5 -> 3 workers
    n, why = recommend(2, 40.0, 20.0, 10, 0.5, POLICY)
    assert n == 3 and "40.00 frames/s arriving" in why and "queued" not in why
    # exactly enough is not rounded up by float noise: 32 / (20 x 0.8) = 2
    assert recommend(2, 32.0, 20.0, 0, None, POLICY)[0] == 2


def test_recommend_drains_an_old_backlog_in_the_target_time() -> None:
    # 300 frames queued, the oldest 5 s old (> 2 s): + 300/30 = 10 frames/s to drain
    n, why = recommend(2, 40.0, 20.0, 300, 5.0, POLICY)
    assert n == 4  # (40 + 10) / 16 = 3.125
    assert "300 queued frames (oldest 5.0 s > 2 s) drained in 30 s" in why
    # the same depth with young frames is the steady state
    assert recommend(2, 40.0, 20.0, 300, 1.0, POLICY)[0] == 3


def test_recommend_idle_unknown_and_measuring() -> None:
    assert recommend(3, 0.0, 20.0, 0, None, POLICY) == (0, "idle: no frames arriving or waiting")
    assert recommend(3, None, 20.0, 50, 9.0, POLICY)[0] == 3  # not enough samples yet
    n, why = recommend(0, 5.0, None, 20, 1.0, POLICY)
    assert n == 1 and "service rate not known" in why  # frames wait, nobody has run one
    assert recommend(0, 0.0, 20.0, 3, 0.1, POLICY)[0] == 1  # frames wait: at least one


# ----------------------------------------------------------------- the tracker
def stats(frames: int, batches: int, model_ms_per_frame: float) -> dict[str, Any]:
    hist = {"buckets": [], "sum": frames * model_ms_per_frame, "count": frames}
    return {"frames": frames, "batches": batches, "timings_ms": {"inference": hist}}


def worker(name: str, at: float, frames: dict[str, tuple[int, int, float]], **raw: Any) -> Any:
    models = {m: {"state": "ready", "stats": stats(*f)} for m, f in frames.items()}
    hb = {"worker": name, "hostname": "h", "state": "ready", "updated_at": at, "models": models}
    return parse_worker(name, {**hb, **raw}, at)


def snapshot(
    at: float, workers: list[Any], depth: int, age: float | None = None
) -> ClusterSnapshot:
    q = QueueView("m", keys.queue_name("m"), depth, age, {})
    return ClusterSnapshot(at, workers, [], {"m": q}, [], {}, False)


def run(tracker: ScalingTracker, seconds: int, rate: float, depth: Any, age: float | None) -> Any:
    """Two workers completing ``rate`` frames/s each, heartbeats every 5 s, polls every 1 s."""
    snap = None
    for t in range(seconds + 1):
        beat = 5 * (t // 5)
        done = int(rate * beat)
        ws = [
            worker(n, 1000.0 + beat, {"m": (done, done // 4, 10.0)}, queues=[keys.queue_name("m")])
            for n in ("w1", "w2")
        ]
        snap = snapshot(1000.0 + t, ws, depth(t) if callable(depth) else depth, age)
        tracker.update(snap)
    return snap


def test_busy_queue_measures_the_service_rate_and_recommends_more() -> None:
    t = ScalingTracker(POLICY)
    # both workers flat out at 10 frames/s, the queue never empties and holds its depth
    snap = run(t, 60, 10.0, 100, 1.0)
    row = t.model(snap, "m")
    assert row["service_rate_source"] == "measured" and row["service_frames_per_s"] == 10.0
    assert row["completed_frames_per_s"] == 20.0 and row["arrival_frames_per_s"] == 20.0
    assert row["current_workers"] == 2 and row["workers"] == ["w1", "w2"]
    assert row["recommended_workers"] == 3  # 20 / (10 x 0.8) = 2.5


def test_a_growing_queue_counts_as_arrivals() -> None:
    t = ScalingTracker(POLICY)
    # completions 2 x 10 frames/s, and the queue grows 5 frames/s on top
    snap = run(t, 60, 10.0, lambda s: 100 + 5 * s, 3.0)
    row = t.model(snap, "m")
    assert row["arrival_frames_per_s"] == pytest.approx(25.0)
    assert snap.queues["m"].depth == 400  # the oldest 3 s > 2 s: drain 400 in 30 s
    assert row["recommended_workers"] == 5  # (25 + 400 / 30) / 8 = 4.79


def test_an_idle_model_is_estimated_from_model_time() -> None:
    t = ScalingTracker(POLICY)
    # 2 frames/s each, batches of 4, 40 ms of model time per batch; the queue stays empty
    snap = None
    for s in range(31):
        beat = 5 * (s // 5)
        ws = [worker(n, 1000.0 + beat, {"m": (2 * beat, beat // 2, 40.0)}) for n in ("w1", "w2")]
        snap = snapshot(1000.0 + s, ws, 0)
        t.update(snap)
    assert snap is not None
    row = t.model(snap, "m")
    assert row["service_rate_source"] == "estimated"
    assert row["service_frames_per_s"] == pytest.approx(100.0)  # 4 frames per 40 ms
    assert row["arrival_frames_per_s"] == pytest.approx(4.0)
    assert row["recommended_workers"] == 1
    # without a heartbeat field "queues", a worker with the model ready consumes it
    assert row["current_workers"] == 2


def test_the_estimate_uses_the_window_s_batches_not_the_worker_s_whole_life() -> None:
    t = ScalingTracker(POLICY)
    snap = None
    # 100 lone frames at 5 ms long ago, then batches of 8 at 40 ms (every frame carries 40)
    for k, at in enumerate(range(1000, 1045, 5)):
        ran = 100 + 80 * k
        ms = 500.0 + 80 * k * 40.0
        entry = {"state": "ready", "stats": {"frames": ran, "batches": 100 + 10 * k,
                 "timings_ms": {"inference": {"sum": ms, "count": ran}}}}  # fmt: skip
        w = parse_worker("w1", {"worker": "w1", "updated_at": at, "models": {"m": entry}}, at)
        snap = snapshot(float(at), [w], 0)
        t.update(snap)
    assert snap is not None
    assert t.model(snap, "m")["service_frames_per_s"] == pytest.approx(200.0)


def test_no_worker_and_a_filling_queue_asks_for_one() -> None:
    t = ScalingTracker(POLICY)
    snap = None
    for s in range(11):
        snap = snapshot(1000.0 + s, [], 5 * s, float(s))
        t.update(snap)
    assert snap is not None
    row = t.model(snap, "m")
    assert row["arrival_frames_per_s"] == pytest.approx(5.0)
    assert row["current_workers"] == 0 and row["recommended_workers"] == 1
    assert row["service_rate_source"] is None


def test_a_restarted_worker_does_not_give_a_negative_rate() -> None:
    t = ScalingTracker(POLICY)
    q = [keys.queue_name("m")]
    for at, done in ((1000.0, 500), (1005.0, 550), (1010.0, 10), (1015.0, 60)):
        snap = snapshot(at, [worker("w1", at, {"m": (done, done // 4, 5.0)}, queues=q)], 0)
        t.update(snap)
    assert t.model(snap, "m")["completed_frames_per_s"] == 10.0


def test_consumers_follow_the_heartbeat_queues_and_skip_leaving_workers() -> None:
    q = keys.queue_name("m")
    ws = [
        worker("a", 1.0, {"m": (0, 0, 0)}, queues=[q]),
        worker("b", 1.0, {"m": (0, 0, 0)}, queues=[]),  # loaded, scaled away
        worker("c", 1.0, {"m": (0, 0, 0)}),  # no "queues": loaded and ready counts
        worker("d", 1.0, {"m": (0, 0, 0)}, queues=[q], state="draining"),
    ]
    assert consumers(snapshot(1.0, ws, 0), "m") == ["a", "c"]


# ---------------------------------------------------------- route and gauges
def test_route_and_gauges(tmp_path: Path) -> None:
    from monitoring.app import create_app

    client = fakeredis.FakeRedis()
    hb = gpu_heartbeat("gpu0-1@hostA", models={"resnet50": model_entry("resnet50")})
    hb["queues"] = [keys.queue_name("resnet50")]
    publish(client, hb)
    settings = Settings(redis_url="redis://fake:6379/0", models_root=tmp_path)
    app = create_app(
        settings, ClusterReader(client, settings), AlertEngine(client, settings), poll=False
    )
    with TestClient(app) as http:
        body = http.get("/api/v1/scaling").json()
        metrics = http.get("/metrics").text
    assert body["policy"]["target_utilization"] == 0.8
    (row,) = [m for m in body["models"] if m["model_id"] == "resnet50"]
    assert row["current_workers"] == 1 and row["workers"] == ["gpu0-1@hostA"]
    assert 'framepool_model_workers{model_id="resnet50"} 1.0' in metrics
    assert (
        f'framepool_recommended_workers{{model_id="resnet50"}} {row["recommended_workers"]}.0'
        in metrics
    )


def test_build_families_without_scaling_rows_has_empty_gauges() -> None:
    families = {f.name: f for f in build_families(None)}
    assert families["framepool_recommended_workers"].samples == []
    assert families["framepool_model_workers"].samples == []


# ------------------------------------------------------------ framepool scale
Q = {m: keys.queue_name(m) for m in ("shape", "noop")}


def test_plan_consumers_removes_from_the_busiest_and_adds_to_the_idlest() -> None:
    both = {"cpu-1": [Q["shape"], Q["noop"]], "cpu-2": [Q["shape"], Q["noop"]]}
    loaded = {"cpu-1": True, "cpu-2": True}
    down = plan_consumers("noop", 1, both, loaded)
    assert down.remove == ["cpu-2"] and down.after == ["cpu-1"]  # a tie: the last by name
    split = {"cpu-1": [Q["shape"], Q["noop"]], "cpu-2": [Q["shape"]]}
    assert plan_consumers("shape", 1, split, loaded).remove == ["cpu-1"]
    apart = {"cpu-1": [Q["noop"]], "cpu-2": [Q["shape"]], "cpu-3": []}
    up = plan_consumers("shape", 3, apart, {**loaded, "cpu-3": True})
    assert up.add == ["cpu-3", "cpu-1"] and up.short == 0  # the idlest first


def test_plan_consumers_only_uses_workers_with_the_model_loaded() -> None:
    consuming = {"a": [Q["noop"]], "b": [], "c": []}
    change = plan_consumers("noop", 3, consuming, {"a": True, "b": True, "c": False})
    assert change.add == ["b"] and change.short == 1 and change.after == ["a", "b"]
    assert plan_consumers("noop", 1, consuming, {"a": True}).add == []  # already there
    gone = plan_consumers("noop", 0, consuming, {"a": True})
    assert gone.remove == ["a"] and gone.after == []
    with pytest.raises(ValueError):
        plan_consumers("noop", -1, consuming, {})
