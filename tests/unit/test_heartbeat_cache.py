"""What keeps the monitor cheap at scale: heartbeats parsed once, kernel lists and merged
kernel tables reused, quick histogram paths equal to the careful ones, lazy messages."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from framepool import keys
from monitoring import histograms
from monitoring.cluster import ClusterReader
from monitoring.heartbeat_cache import PREFIX_BYTES, parse_heartbeat
from monitoring.stream import StreamHub
from tests.unit.test_cluster import NOW, Clock, heartbeat, model_entry, settings


def kernel(name: str, calls: int = 10) -> dict[str, Any]:
    return {"name": name, "device_type": "cuda", "total_calls": calls, "avg_time_ms": 0.5,
            "total_time_ms": 0.5 * calls, "avg_memory_mb": 1.0,
            "last_execution": "2026-11-22T18:00:00Z"}  # fmt: skip


def doc(*names: str, updated_at: float = NOW - 1) -> dict[str, Any]:
    models = {f"m{i}": model_entry(f"m{i}", kernels=[kernel(n), kernel(n + "#2")])
              for i, n in enumerate(names)}  # fmt: skip
    return heartbeat("w@h", "h", models, updated_at=updated_at)


def compact(d: Any) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


def publish(client: Any, hb: dict[str, Any]) -> None:
    """As workers/heartbeat.py writes it: compact JSON."""
    client.set(keys.worker_heartbeat(hb["worker"]), compact(hb), ex=15)
    client.sadd(keys.WORKERS, hb["worker"])


@pytest.mark.parametrize(
    "names",
    [("conv",), ("a", "b", "c"), ("odd}]name", "x"), ('"kernels":[{"a', "b"), ("back\\slash}]",),
     ("ünïcode ✓", 'quote"}],{"'), ()],
)  # fmt: skip
def test_parse_heartbeat_is_json_loads(names: tuple[str, ...]) -> None:
    raw = compact(doc(*names))
    parsed, known = parse_heartbeat(raw, [])
    assert parsed == json.loads(raw)
    again, known2 = parse_heartbeat(raw, known)  # every kernel array known now
    assert again == json.loads(raw)
    assert [k for _, k in known2] == [k for _, k in known] or not known


@pytest.mark.parametrize(
    "raw",
    [b"{}", b"[]", b'{"kernels":[{"a":1}]}', b'{"models":{"m":{"kernels":[{"a":1}]},"x":{"kernels":[{"b":2}]}},"kernels":[{"c":3}]}',
     b'{"models": {"m": {"kernels": [{"a": 1}]}}}', b'{"models":{"m":{"kernels":[{"a":"}]"}]}}}',
     b'{"models":{"m":{"kernels":[1,2]}}}', b'{"models":{"m":{"kernels":[{"a":1}],"kernels":[{"b":2}]}}}'],
)  # fmt: skip
def test_parse_heartbeat_falls_back_to_a_whole_parse(raw: bytes) -> None:
    assert parse_heartbeat(raw, [])[0] == json.loads(raw)


def test_unchanged_kernel_arrays_give_the_same_list_objects() -> None:
    first = doc("a", "b")
    d1, known = parse_heartbeat(compact(first), [])
    second = copy.deepcopy(first)
    second["updated_at"] += 5
    second["models"]["m0"]["stats"]["frames"] += 40
    second["models"]["m1"]["kernels"][0]["total_calls"] += 1  # m1 profiled again
    d2, _ = parse_heartbeat(compact(second), known)
    assert d2 == second
    assert d2["models"]["m0"]["kernels"] is d1["models"]["m0"]["kernels"]
    assert d2["models"]["m1"]["kernels"] is not d1["models"]["m1"]["kernels"]


class CountingRedis(fakeredis.FakeRedis):
    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.fetched: list[str] = []

    def mget(self, keys_: Any, *args: Any) -> Any:
        self.fetched += [k.rpartition(":")[2] for k in keys_]
        return super().mget(keys_, *args)


def test_the_reader_fetches_and_parses_only_changed_heartbeats(tmp_path: Path) -> None:
    client = CountingRedis()
    clock = Clock()
    for name in ("a@h", "b@h"):
        hb = doc("conv")
        hb["worker"] = name
        publish(client, hb)
    reader = ClusterReader(client, settings(tmp_path), clock=clock)
    first = reader.read()
    assert sorted(client.fetched) == ["a@h", "b@h"]
    clock.t += 1
    second = reader.read()
    assert sorted(client.fetched) == ["a@h", "b@h"]  # nothing changed: nothing fetched
    assert second.worker("a@h").age_s == pytest.approx(first.worker("a@h").age_s + 1)  # type: ignore[union-attr]
    assert second._kernel_cache is first._kernel_cache  # kernel rows unchanged: merged once
    changed = doc("conv", updated_at=NOW - 0.5)
    changed["worker"], changed["models"]["m0"]["state"] = "b@h", "degraded"
    publish(client, changed)
    third = reader.read()
    assert client.fetched[2:] == ["b@h"] and third.models["m0"].states["b@h"] == "degraded"
    assert third._kernel_cache is first._kernel_cache  # new heartbeat, the same kernel rows
    changed["models"]["m0"]["kernels"][0]["total_calls"] = 99
    changed["updated_at"] = NOW - 0.2
    publish(client, changed)
    fourth = reader.read()
    assert fourth._kernel_cache is not first._kernel_cache
    assert {k["name"]: k["total_calls"] for k in fourth.kernels()}["conv"] == 10 + 99


def test_a_heartbeat_rewritten_with_the_same_prefix_but_no_stamp_is_read_again(
    tmp_path: Path,
) -> None:
    client = CountingRedis()
    long_name = "w" * PREFIX_BYTES  # the prefix holds neither the stamp nor the whole value
    hb = doc("conv")
    hb = {"worker": long_name, **{k: v for k, v in hb.items() if k != "worker"}}
    client.set(keys.worker_heartbeat("x@h"), compact(hb))
    client.sadd(keys.WORKERS, "x@h")
    reader = ClusterReader(client, settings(tmp_path), clock=Clock())
    reader.read()
    reader.read()
    assert client.fetched == ["x@h", "x@h"]


def test_merge_raw_and_compact_equal_the_careful_paths() -> None:
    rng = random.Random(3)
    bounds = [0.1, 0.5, 1, 2.5, 10, 100]

    def one() -> Any:
        counts = sorted(rng.randint(0, 50) for _ in bounds)
        h: Any = {"buckets": [[b, c] for b, c in zip(bounds, counts, strict=True)],
                  "sum": rng.uniform(0, 99), "count": counts[-1] + rng.choice([0, 2, -99])}  # fmt: skip
        spoil = rng.randrange(12)
        if spoil == 0:
            h["buckets"][1][1] = True
        elif spoil == 1:
            h["buckets"][2] = [1.5, 3, 4]
        elif spoil == 2:
            h["buckets"].reverse()
        elif spoil == 3:
            h["sum"] = None
        elif spoil == 4:
            h = None
        elif spoil == 5:
            h["buckets"][0][0] = float("nan")
        return h

    quick = 0
    for _ in range(400):
        parts = [one() for _ in range(rng.randint(1, 5))]
        assert histograms.merge_raw(parts) == histograms.merge(parts)
        assert histograms.compact_many(parts) == list(map(histograms.compact, parts))
        quick += histograms._merge_same_bounds(parts) is not None
        for p in parts:
            clean = histograms.clean(p)
            c = histograms.compact(p)
            assert (list(c.bounds), list(c.counts), c.sum, c.n) == (
                [b for b, _ in clean["buckets"]], [n for _, n in clean["buckets"]],
                clean["sum"], clean["count"],
            )  # fmt: skip
    assert quick > 20  # the quick path ran
    clean_parts = [histograms.clean(one()) for _ in range(6)] + [histograms.empty()]
    rng.shuffle(clean_parts)
    assert histograms.compact_many(clean_parts) == list(map(histograms.compact, clean_parts))
    assert histograms.compact_many([]) == []


def test_the_stream_message_is_built_only_for_clients() -> None:
    hub = StreamHub(10, 4096, 1.0)
    built: list[int] = []

    def build() -> dict[str, Any]:
        built.append(1)
        return {"type": "gpu_metrics", "n": len(built)}

    hub.publish(build)
    assert built == []  # nobody watching: nothing built
    assert hub.latest() == {"type": "gpu_metrics", "n": 1} and hub.latest() is hub.latest()
    assert built == [1]
    hub.broadcast({"type": "other"})
    assert hub.latest() == {"type": "other"}
