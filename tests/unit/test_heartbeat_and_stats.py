"""Heartbeat writes (fakeredis): the heartbeat, the kernel tables apart, histograms as counts;
and the per-model counters and histograms."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import fakeredis
import redis

from framepool import keys
from monitoring.histograms import resolve
from workers.heartbeat import Heartbeat, KernelIndex, wire_stats
from workers.stats import BUCKETS_MS, Histogram, ModelStats


def test_heartbeat_writes_json_with_a_ttl_and_registers_the_worker() -> None:
    client = fakeredis.FakeRedis()
    hb = Heartbeat(client, "w1@h", 2.0, lambda: {"worker": "w1@h", "n": 1})
    assert hb.write()
    assert json.loads(client.get(keys.worker_heartbeat("w1@h"))) == {"worker": "w1@h", "n": 1}
    assert 0 < client.ttl(keys.worker_heartbeat("w1@h")) <= keys.heartbeat_ttl(2.0) == 6
    assert client.smembers(keys.WORKERS) == {b"w1@h"}


def test_a_failing_snapshot_or_redis_does_not_stop_the_heartbeat() -> None:
    client = fakeredis.FakeRedis()

    def boom() -> dict:
        raise RuntimeError("bug in snapshot")

    assert Heartbeat(client, "w", 1.0, boom).write() is False

    class Down(fakeredis.FakeRedis):
        def pipeline(self, *a, **k):  # type: ignore[no-untyped-def, override]
            raise redis.ConnectionError("redis away")

    hb = Heartbeat(Down(), "w", 1.0, lambda: {})
    assert hb.write() is False and hb.write() is False and hb.beats == 0


def test_heartbeat_thread_beats_and_stop_removes_the_key() -> None:
    client = fakeredis.FakeRedis()
    hb = Heartbeat(client, "w", 0.05, lambda: {"ok": True})
    hb.start()
    import time

    deadline = time.monotonic() + 5
    while hb.beats < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hb.beats >= 3
    hb.stop()
    assert client.get(keys.worker_heartbeat("w")) is None
    assert client.smembers(keys.WORKERS) == set()  # a clean stop is not a missing worker


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((1, 5, 10))
    for v in (0.5, 1, 3, 7, 20):
        h.observe(v)
    snap = h.snapshot()
    assert snap["buckets"] == [[1, 2], [5, 3], [10, 4]]
    assert snap["count"] == 5 and snap["sum"] == 31.5


def test_model_stats_counts_by_status() -> None:
    s = ModelStats()
    s.record_batch(3)
    s.record_results(
        [
            {"status": "ok", "timings_ms": {"inference": 2.0}},
            {"status": "error", "timings_ms": {}},
            {"status": "expired", "timings_ms": {"queue": 40.0}},
        ]
    )
    snap = s.snapshot()
    assert (snap["frames"], snap["ok"], snap["errors"], snap["expired"]) == (3, 1, 1, 1)
    assert snap["batch_sizes"] == {"3": 1}
    assert snap["timings_ms"]["inference"]["count"] == 1 and "decode" not in snap["timings_ms"]


# ------------------------------------------------- kernel tables under a key of their own
def _rows(n: int, calls: int = 10) -> list[dict]:
    return [{"name": f"k{i}", "device_type": "cuda", "total_calls": calls} for i in range(n)]


class _Tables:
    """What a worker's snapshot hands the heartbeat: a stamp, row counts and the rows."""

    def __init__(self) -> None:
        self.version = 0
        self.rows = {"m": _rows(2)}
        self.asked = 0

    def snapshot(self) -> dict:
        def tables() -> dict:
            self.asked += 1
            return self.rows

        counts = {m: len(r) for m, r in self.rows.items()}
        return {"worker": "w@h", "kernels": KernelIndex(f"1-2-{self.version}", counts, tables)}


def test_kernel_tables_are_written_apart_and_only_when_their_stamp_moves() -> None:
    client = fakeredis.FakeRedis()
    src = _Tables()
    hb = Heartbeat(client, "w@h", 2.0, src.snapshot)
    table_key = keys.worker_kernels("w@h")
    assert table_key == "framepool:worker:w@h:kernels"
    assert hb.write()
    beat = json.loads(client.get(keys.worker_heartbeat("w@h")))
    assert beat == {"worker": "w@h", "kernels": {"stamp": "1-2-0", "rows": {"m": 2}}}
    table = json.loads(client.get(table_key))
    assert table == {"worker": "w@h", "stamp": "1-2-0", "models": {"m": _rows(2)}}
    assert 0 < client.ttl(table_key) <= keys.heartbeat_ttl(2.0)
    client.expire(table_key, 1)
    assert hb.write() and hb.write()  # same stamp: the rows are not asked for or written again
    assert src.asked == 1 and hb.kernel_writes == 1
    assert client.ttl(table_key) > 1  # but the table keeps the heartbeat's TTL
    src.version, src.rows = 1, {"m": _rows(3, calls=20)}  # the worker profiled
    assert hb.write() and src.asked == 2 and hb.kernel_writes == 2
    assert json.loads(client.get(table_key))["models"]["m"] == _rows(3, calls=20)
    beat = json.loads(client.get(keys.worker_heartbeat("w@h")))
    assert beat["kernels"] == {"stamp": "1-2-1", "rows": {"m": 3}}


def test_a_kernel_table_that_expired_is_written_again_and_stop_removes_both_keys() -> None:
    client = fakeredis.FakeRedis()
    src = _Tables()
    hb = Heartbeat(client, "w@h", 2.0, src.snapshot)
    assert hb.write()
    client.delete(keys.worker_kernels("w@h"))  # e.g. the worker stalled past the TTL
    assert hb.write()
    assert json.loads(client.get(keys.worker_kernels("w@h")))["stamp"] == "1-2-0"
    hb.stop()
    assert client.get(keys.worker_heartbeat("w@h")) is None
    assert client.get(keys.worker_kernels("w@h")) is None


def test_after_a_failed_write_the_kernel_table_is_written_again() -> None:
    client = fakeredis.FakeRedis()
    src = _Tables()
    hb = Heartbeat(client, "w@h", 2.0, src.snapshot)
    real = client.pipeline
    client.pipeline = lambda *a, **k: (_ for _ in ()).throw(redis.ConnectionError("away"))
    assert hb.write() is False
    client.pipeline = real
    assert hb.write() and hb.kernel_writes == 1
    assert json.loads(client.get(keys.worker_kernels("w@h")))["models"] == {"m": _rows(2)}


def test_wire_stats_sends_counts_with_the_bounds_once_and_resolve_gives_the_buckets_back() -> None:
    s = ModelStats()
    s.record_batch(4)
    s.record_results([{"status": "ok", "timings_ms": {"inference": 3.0, "total": 9.0}}] * 4)
    s.record_frame_size(50_000)
    snap = s.snapshot()
    wire = wire_stats(snap)
    assert set(wire["hist_bounds"]) == {"ms", "batch_size", "frame_size_bytes"}
    assert wire["hist_bounds"]["ms"] == list(BUCKETS_MS)
    inference = wire["timings_ms"]["inference"]
    # 4 frames of 3 ms: 0 up to 2.5 ms, then 4 (= count) from 5 ms on, left out
    assert inference == {"bounds": "ms", "counts": [0, 0, 0, 0, 0], "sum": 12.0, "count": 4}
    for k in ("frames", "ok", "batches", "batch_sizes"):
        assert wire[k] == snap[k]
    bounds = wire["hist_bounds"]
    assert resolve(wire["batch_size_hist"], bounds) == snap["batch_size_hist"]
    assert resolve(wire["frame_size_bytes"], bounds) == snap["frame_size_bytes"]
    assert {st: resolve(h, bounds) for st, h in wire["timings_ms"].items()} == snap["timings_ms"]
    small = json.dumps(wire, separators=(",", ":"))
    assert len(small) < len(json.dumps(snap, separators=(",", ":")))
    # bounds workers do not use are named too, and the same bounds share a name
    odd = {"buckets": [[3, 1], [7, 2]], "sum": 9.0, "count": 2}
    other = wire_stats({"timings_ms": {"a": odd, "b": odd}})
    assert other["timings_ms"]["a"]["bounds"] == other["timings_ms"]["b"]["bounds"] == "b0"
    assert resolve(other["timings_ms"]["a"], other["hist_bounds"]) == odd


def _runtime(table: Any) -> SimpleNamespace:
    """What ``build_snapshot`` reads of a ``WorkerRuntime``: one CPU model with a profiler."""
    stats = ModelStats()
    stats.record_batch(2)
    stats.record_results([{"status": "ok", "timings_ms": {"inference": 2.0}}] * 2)
    health = SimpleNamespace(snapshot=lambda: {"model_id": "m", "state": "ready"})
    runner = SimpleNamespace(
        stats=stats, max_batch_size=8, in_flight=0, cap=SimpleNamespace(snapshot=lambda: {}),
        profiler=SimpleNamespace(stats=lambda: {"profiled_batches": 1}, table=table),
    )  # fmt: skip
    return SimpleNamespace(
        name="w@h", device="cpu", state="ready", started_at=1000.0, sampler=None,
        slots={"m": SimpleNamespace(device="cpu", version="1", health=health)},
        runners={"m": runner}, gpu=SimpleNamespace(get_stats=lambda: {"allocations": []}),
        settings=SimpleNamespace(runtime_id="t", heartbeat_interval_seconds=5.0),
    )  # fmt: skip


def test_the_worker_snapshot_names_its_kernel_tables_and_their_version() -> None:
    from workers.profiling import KernelTable  # torch
    from workers.snapshot import build_snapshot

    table = KernelTable()
    at = datetime(2026, 11, 22, tzinfo=UTC)
    table.add("conv", "cpu", 3, 6.0, 0.0, at)
    runtime = _runtime(table)
    doc = build_snapshot(runtime)  # type: ignore[arg-type]
    assert "kernels" not in doc["models"]["m"]  # the rows are not in the heartbeat
    assert doc["models"]["m"]["stats"]["hist_bounds"]["ms"] == list(BUCKETS_MS)
    index = doc["kernels"]
    assert isinstance(index, KernelIndex) and index["rows"] == {"m": 1}
    assert index.tables() == {"m": table.top(100)}
    assert json.loads(json.dumps(doc, default=str))["kernels"] == {
        "stamp": index.stamp, "rows": {"m": 1}
    }  # fmt: skip
    assert build_snapshot(runtime)["kernels"].stamp == index.stamp  # type: ignore[arg-type]
    table.add("conv", "cpu", 1, 2.0, 0.0, at)  # profiled again
    moved = build_snapshot(runtime)["kernels"]  # type: ignore[arg-type]
    assert moved.stamp != index.stamp and moved.tables()["m"][0]["total_calls"] == 4
    runtime.started_at = 2000.0  # another run of the worker: another stamp
    assert build_snapshot(runtime)["kernels"].stamp != moved.stamp  # type: ignore[arg-type]


def test_serving_reads_the_workers_own_state_not_a_models() -> None:
    from workers.heartbeat import serving

    loading = json.dumps(
        {"state": "starting", "models": {"m": {"state": "ready"}}}, separators=(",", ":")
    )
    assert b'"state":"ready"' in loading.encode()  # what a substring test took for ready
    assert serving(loading.encode()) is False
    assert serving(json.dumps({"state": "ready", "models": {}})) is True
    assert serving(None) is False and serving(b"not json") is False and serving(b"[]") is False
