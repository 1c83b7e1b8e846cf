"""The monitor reading heartbeats as workers of this version write them (kernel tables under
a key of their own, fetched only when their stamp moves; histograms as counts) and as older
workers wrote them (rows and bucket pairs inline), alone and side by side (a rolling upgrade).
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from framepool import keys
from monitoring import histograms, responses
from monitoring.cluster import ClusterReader, ClusterSnapshot
from monitoring.collector import make_registry, render
from monitoring.heartbeat_cache import loads
from monitoring.rates import RateTracker
from monitoring.scaling import ScalingTracker
from tests.unit.test_cluster import (
    NOW,
    Clock,
    cluster_heartbeats,
    heartbeat,
    kombu_message,
    model_entry,
    settings,
)
from workers.heartbeat import Heartbeat, KernelIndex, wire_stats


class CountingRedis(fakeredis.FakeRedis):
    """Notes the keys of every MGET."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.fetched: list[str] = []

    def mget(self, keys_: Any, *args: Any) -> Any:
        self.fetched += [k.decode() if isinstance(k, bytes) else k for k in keys_]
        return super().mget(keys_, *args)

    def tables_fetched(self) -> list[str]:
        return sorted(k for k in self.fetched if k.endswith(":kernels"))


def kernel(name: str, calls: int = 10) -> dict[str, Any]:
    return {"name": name, "device_type": "cuda", "total_calls": calls, "avg_time_ms": 0.5,
            "total_time_ms": 0.5 * calls, "avg_memory_mb": 1.0,
            "last_execution": "2026-11-22T18:00:00Z"}  # fmt: skip


def as_new(hb: dict[str, Any], stamp: str) -> dict[str, Any]:
    """``hb`` (the old layout) as a worker of this version's snapshot gives it."""
    doc = copy.deepcopy(hb)
    tables = {m: e.pop("kernels") for m, e in doc["models"].items() if "kernels" in e}
    for entry in doc["models"].values():
        if "stats" in entry:
            entry["stats"] = wire_stats(entry["stats"])
    counts = {m: len(rows) for m, rows in tables.items()}
    doc["kernels"] = KernelIndex(stamp, counts, lambda: copy.deepcopy(tables))
    return doc


def publish_old(client: Any, hb: dict[str, Any]) -> None:
    """As workers before the kernel key wrote it: rows and bucket pairs inline."""
    client.set(keys.worker_heartbeat(hb["worker"]), json.dumps(hb, separators=(",", ":")), ex=15)
    client.sadd(keys.WORKERS, hb["worker"])


def publish_new(client: Any, hb: dict[str, Any], stamp: str = "1-1-1") -> Heartbeat:
    """As workers of this version write it: ``workers.heartbeat.Heartbeat``."""
    doc = as_new(hb, stamp)
    writer = Heartbeat(client, hb["worker"], 5.0, lambda: doc)
    assert writer.write()
    return writer


def two_workers(updated_at: float = NOW - 1) -> list[dict[str, Any]]:
    return [
        heartbeat(
            name,
            "h",
            {
                "m": model_entry("m", ok=20 + i, kernels=[kernel("conv", 10 + i)]),
                "n": model_entry("n", kernels=[kernel("gemm")]),
            },
            updated_at=updated_at,
        )  # fmt: skip
        for i, name in enumerate(("a@h", "b@h"))
    ]


def test_kernel_tables_are_fetched_once_per_stamp(tmp_path: Path) -> None:
    client = CountingRedis()
    a, b = two_workers()
    publish_new(client, a)
    publish_new(client, b)
    beat = json.loads(client.get(keys.worker_heartbeat("a@h")))
    assert "kernels" not in beat["models"]["m"] and beat["kernels"]["rows"] == {"m": 1, "n": 1}
    clock = Clock()
    reader = ClusterReader(client, settings(tmp_path), clock=clock)
    first = reader.read()
    assert client.tables_fetched() == [
        "framepool:worker:a@h:kernels",
        "framepool:worker:b@h:kernels",
    ]
    rows = {k["name"]: k["total_calls"] for k in first.kernels()}
    assert rows == {"conv": 10 + 11, "gemm": 20}
    assert first.worker("a@h").models["m"]["kernels"] == [kernel("conv", 10)]  # type: ignore[union-attr]
    client.fetched.clear()
    clock.t += 1
    second = reader.read()
    assert client.fetched == []  # nothing changed: nothing fetched
    assert second._kernel_cache is first._kernel_cache
    a2 = copy.deepcopy(a)
    a2["updated_at"] = NOW - 0.5
    a2["models"]["m"]["state"] = "degraded"
    publish_new(client, a2)  # a new heartbeat, the same stamp: its rows are not fetched
    third = reader.read()
    assert client.fetched == [keys.worker_heartbeat("a@h")]
    assert third.models["m"].states["a@h"] == "degraded"
    was = first.worker("a@h").models["m"]["kernels"]  # type: ignore[union-attr]
    assert third.worker("a@h").models["m"]["kernels"] is was  # type: ignore[union-attr]
    assert third._kernel_cache is first._kernel_cache  # the merged table is reused
    a3 = copy.deepcopy(a2)
    a3["updated_at"] = NOW - 0.2
    a3["models"]["m"]["kernels"] = [kernel("conv", 99), kernel("relu", 5)]
    publish_new(client, a3, stamp="1-1-2")  # the worker profiled
    client.fetched.clear()
    fourth = reader.read()
    assert client.tables_fetched() == ["framepool:worker:a@h:kernels"]
    assert fourth._kernel_cache is not first._kernel_cache
    assert {k["name"]: k["total_calls"] for k in fourth.kernels()} == {
        "conv": 99 + 11, "gemm": 20, "relu": 5
    }  # fmt: skip


def test_no_rows_no_fetch_and_a_missing_table_is_asked_for_with_the_next_heartbeat(
    tmp_path: Path,
) -> None:
    client = CountingRedis()
    a, b = two_workers()
    for entry in b["models"].values():
        entry["kernels"] = []  # b never profiled
    publish_new(client, a)
    publish_new(client, b)
    client.delete(keys.worker_kernels("a@h"))  # a's table is gone (a stalled worker, say)
    clock = Clock()
    reader = ClusterReader(client, settings(tmp_path), clock=clock)
    snap = reader.read()
    assert client.tables_fetched() == ["framepool:worker:a@h:kernels"]  # not b's: no rows
    assert snap.worker("b@h").models["m"]["kernels"] == []  # type: ignore[union-attr]
    assert "kernels" not in snap.worker("a@h").models["m"]  # type: ignore[union-attr]
    assert {k["name"] for k in snap.kernels()} == set()
    client.fetched.clear()
    clock.t += 1
    reader.read()
    assert client.fetched == []  # not at every poll: with the next heartbeat
    a["updated_at"] = NOW - 0.5
    publish_new(client, a)  # the writer puts the table back
    snap = reader.read()
    assert client.tables_fetched() == ["framepool:worker:a@h:kernels"]
    assert {k["name"]: k["total_calls"] for k in snap.kernels()} == {"conv": 10, "gemm": 10}


def test_a_table_of_garbage_or_of_other_models_is_left_out(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    a, _ = two_workers()
    publish_new(client, a)
    table = {"worker": "a@h", "stamp": "1-1-1",
             "models": {"m": [kernel("conv")], "ghost": [kernel("boo")], "n": "junk"}}  # fmt: skip
    client.set(keys.worker_kernels("a@h"), json.dumps(table))
    conf = settings(tmp_path)
    snap = ClusterReader(client, conf, clock=Clock()).read()
    w = snap.worker("a@h")
    assert w is not None and set(w.models) == {"m", "n"} and "kernels" not in w.models["n"]
    assert [k["name"] for k in snap.kernels()] == ["conv"]
    publish_new(client, a, stamp="1-1-9")
    client.set(keys.worker_kernels("a@h"), b"{not json")
    snap = ClusterReader(client, conf, clock=Clock()).read()
    assert snap.worker("a@h") is not None and snap.kernels() == []


def everything(
    snap: ClusterSnapshot, rates: RateTracker, scaling: ScalingTracker
) -> dict[str, Any]:
    """What the monitor serves from a snapshot: /metrics, the REST answers, the stream."""
    return {
        "scaling": scaling.report(snap),
        "metrics": render(make_registry(lambda: snap, lambda: [])).decode(),
        "kernels": snap.kernels(),
        "models": {m: v.to_dict() for m, v in snap.models.items()},
        "workers": responses.workers_list(snap),
        "status": responses.gpu_status(snap, 10.0),
        "report": responses.report(snap, 10.0, []),
        "stream": responses.stream_message(snap, rates, [], []),
        "devices": [d.to_dict() for d in snap.devices],
        "queues": {m: q.to_dict() for m, q in snap.queues.items()},
    }


@pytest.mark.parametrize("layout", ["new", "mixed"])
def test_every_answer_is_the_same_whichever_layout_the_workers_write(
    tmp_path: Path, layout: str
) -> None:
    """The same cluster written three ways: all workers old, all new, half and half."""
    conf = settings(tmp_path)

    def serve(how: str) -> list[dict[str, Any]]:
        client = fakeredis.FakeRedis()
        client.sadd(keys.SERVED_MODELS, "shape_detector", "resnet18", "broken")
        client.lpush(keys.queue_name("resnet18"), kombu_message({"enqueued_at": NOW - 4.0}))
        reader = ClusterReader(client, conf, clock=Clock())
        rates, scaling = RateTracker(), ScalingTracker()
        out = []
        for step in range(2):  # two heartbeats each: rates between them
            for i, hb in enumerate(cluster_heartbeats()):
                hb["updated_at"] = NOW - 5 + 4 * step
                for entry in hb["models"].values():
                    if "stats" in entry:
                        grow(entry["stats"], 7 * step)
                new = how == "new" or (how == "mixed" and i % 2 == 0)
                publish_new(client, hb) if new else publish_old(client, hb)
            snap = reader.read()
            rates.update(snap)
            scaling.update(snap)
            out.append(everything(snap, rates, scaling))
        return out

    before = serve("old")
    assert before[1]["kernels"] and "inference_duration_seconds_bucket" in before[1]["metrics"]
    assert before[1]["stream"]["models"]["resnet18"]["p99_ms"] is not None  # rates were taken
    assert serve(layout) == before


def grow(stats: dict[str, Any], frames: int) -> None:
    """``frames`` more frames of 30 ms end to end, in batches of one, in bucket-pair form."""
    stats["frames"] += frames
    for h in (stats["timings_ms"]["total"], stats["batch_size_hist"]):
        if h is stats["batch_size_hist"]:
            h["buckets"] = [[le, n + frames] for le, n in h["buckets"]]  # size 1 <= every bound
        else:
            h["buckets"] = [[le, n + (frames if le >= 30 else 0)] for le, n in h["buckets"]]
        h["count"] += frames
        h["sum"] += frames * (30.0 if h is stats["timings_ms"]["total"] else 1.0)


def test_compact_counts_equals_the_careful_path_on_garbage() -> None:
    rng = random.Random(5)
    bounds: dict[str, list[float]] = {
        "ms": [0.1, 0.5, 1, 2.5, 10, 100], "b": [1, 2, 4], "bad": [3, 1], "e": []
    }  # fmt: skip

    def one() -> Any:
        name: Any = rng.choice(["ms", "ms", "b", "bad", "e", "zz", 3])
        n = len(bounds.get(name, [1, 2])) if isinstance(name, str) else 2
        counts = sorted(rng.randint(0, 50) for _ in range(n))
        h: Any = {"bounds": name, "counts": counts, "sum": rng.uniform(0, 99),
                  "count": (counts[-1] if counts else 0) + rng.choice([0, 2, -99])}  # fmt: skip
        spoil = rng.randrange(14)
        if spoil == 0 and counts:
            h["counts"][0] = True
        elif spoil == 1:
            h["counts"] = [*counts, 1]
        elif spoil == 2 and len(counts) > 1 and counts[0] != counts[-1]:
            h["counts"] = counts[::-1]
        elif spoil == 3:
            h["sum"] = None
        elif spoil == 4:
            h = None
        elif spoil == 5 and counts:
            h["counts"][0] = float("nan")
        elif spoil == 6:
            h["count"] = float("inf")
        elif spoil == 7:
            h = {"buckets": [[1, 2], [3, 4]], "sum": 1, "count": 5}
        elif spoil == 8 and counts:
            h["counts"][0] = -1
        elif spoil in (9, 10, 11) and isinstance(h["count"], int):  # stopped at count
            h["counts"] = counts[: rng.randint(0, len(counts))]
            h["count"] = max([0, *h["counts"]]) + rng.choice([0, 1, 2.0, -1])
        elif spoil == 12:
            h["counts"], h["count"] = counts[:1], rng.choice([None, "7", True])
        return h

    quick = 0
    for _ in range(3000):
        hists = [one() for _ in range(rng.randint(1, 6))]
        tables = [rng.choice([bounds, bounds, None, {"ms": bounds["ms"]}]) for _ in hists]
        careful = [
            histograms.compact(histograms.resolve(h, b)) for h, b in zip(hists, tables, strict=True)
        ]
        got = histograms.compact_counts(hists, tables)
        assert got == careful
        assert [list(map(type, c)) for c in got] == [list(map(type, c)) for c in careful]
        quick += all(type(h) is dict and "counts" in h and h.get("bounds") in ("ms", "b")
                     and t is not None for h, t in zip(hists, tables, strict=True))  # fmt: skip
    assert quick > 20  # the quick path was tried
    clean = [{"bounds": "ms", "counts": [0, 1, 2, 3, 4, 5], "sum": 9.5, "count": 6}] * 3
    parts = histograms.compact_counts(clean, [bounds] * 3)
    assert all(p.bounds is parts[0].bounds for p in parts)  # one tuple of bounds, shared


@pytest.mark.parametrize(
    "raw",
    [b'{"a":1}', b'{"a":NaN,"b":[1e400]}', b'\xef\xbb\xbf{"a":1}', b'["\\ud800"]', b"[1,2]",
     '{"é":1}', b'{"a":1,"a":2}', b'  {"n": 18446744073709551615} '],
)  # fmt: skip
def test_loads_is_json_loads(raw: bytes | str) -> None:
    got, want = loads(raw), json.loads(raw)
    assert json.dumps(got) == json.dumps(want)


@pytest.mark.parametrize("raw", [b"{not json", b"\xff", b""])
def test_loads_raises_what_json_loads_raises(raw: bytes) -> None:
    with pytest.raises(ValueError):
        loads(raw)
