"""ClusterReader on fakeredis: heartbeats, GPUs per device, models, queues, gone workers.

The heartbeats are built with the workers' own ``ModelStats`` (so histograms have
the real bucket format) and the queue messages are published by the real
``FrameProducer`` through kombu's Redis transport on a fakeredis server.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import fakeredis
import kombu.transport.redis as kombu_redis
import msgpack
import numpy as np
import pytest
import redis

from framepool import codec, keys
from framepool.celery_app import create_app
from framepool.settings import DEFAULT_MODELS_ROOT, Settings
from monitoring import histograms
from monitoring.cluster import GONE_FORGET_S, ClusterReader, quantile_ms
from monitoring.queues import enqueued_at
from workers.stats import ModelStats

NOW = 1_790_000_000.0
STAGES_MS = {"queue": 2.0, "batch_wait": 0.4, "decode": 1.5, "preprocess": 0.8,
             "host_to_device": 0.3, "inference": 6.0, "postprocess": 0.2}  # fmt: skip
GPU_A = "GPU-6f1e0c2a-aaaa-bbbb-cccc-000000000001"


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def stats(ok: int, errors: int = 0, expired: int = 0, totals: list[float] | None = None) -> dict:
    """A worker's ModelStats snapshot: ``ok`` frames with ``totals`` ms end to end."""
    s = ModelStats()
    totals = totals or [10.0] * ok
    for i in range(0, ok + errors + expired, 4):
        s.record_batch(min(4, ok + errors + expired - i))
    results = [{"status": "ok", "timings_ms": {**STAGES_MS, "total": t}} for t in totals[:ok]]
    results += [{"status": "error", "timings_ms": {}}] * errors
    results += [{"status": "expired", "timings_ms": {"queue": 900.0}}] * expired
    s.record_results(results)
    for _ in range(ok):
        s.record_frame_size(50_000)
    return s.snapshot()


def model_entry(
    model_id: str,
    *,
    state: str = "ready",
    version: str = "1.0.0",
    device: str = "cuda:0",
    ok: int = 20,
    errors: int = 0,
    expired: int = 0,
    in_flight: int = 0,
    totals: list[float] | None = None,
    kernels: list[dict] | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "model_id": model_id, "state": state, "reason": None, "error_rate": 0.0,
        "window_frames": ok + errors, "inferences": ok + errors, "errors": errors,
        "since": NOW - 100, "version": version, "device": device,
        "queue": keys.queue_name(model_id), "estimated_mb": 100.0, "measured_mb": None,
    }  # fmt: skip
    if state != "failed":
        entry.update(
            max_batch_size=16,
            batch_cap={"limit": 16, "current": 16, "ooms": 0, "last_oom_at": None},
            in_flight=in_flight,
            stats=stats(ok, errors, expired, totals),
            kernels=kernels or [],
        )
    return entry


def reading(index: int, uuid: str, util: float, used: float, proc: float | None = 900.0) -> dict:
    return {
        "index": index, "uuid": uuid, "name": "NVIDIA H100 80GB HBM3",
        "utilization_percent": util, "memory_used_mb": used, "memory_total_mb": 81559.0,
        "temperature_c": 61.0, "power_w": 310.5, "sm_clock_mhz": 1980.0,
        "mem_clock_mhz": 2619.0, "process_memory_mb": proc,
    }  # fmt: skip


def heartbeat(
    name: str,
    host: str,
    models: dict[str, dict],
    *,
    gpu: dict | None = None,
    nvml_gpus: list[dict] | None = None,
    allocations: list[dict] | None = None,
    updated_at: float = NOW - 1,
) -> dict[str, Any]:
    """A heartbeat in the shape of workers/snapshot.py."""
    return {
        "worker": name, "hostname": host, "pid": 4000 + len(name), "runtime_id": "framepool-t",
        "state": "ready", "device": "cuda:0" if gpu else "cpu", "gpu": gpu,
        "gpus": [gpu] if gpu else [], "started_at": NOW - 300, "updated_at": updated_at,
        "heartbeat_interval_s": 5.0,
        "nvml": {"available": gpu is not None,
                 "reason": None if gpu else "NVML library not found", "gpus": nvml_gpus or []},
        "gpu_manager": {"status": "available" if gpu else "disabled",
                        "device_count": 1 if gpu else 0, "devices": [],
                        "allocations": allocations or [], "total_allocated_mb": 0.0},
        "models": models,
        "totals": {"frames": 0, "ok": 0, "errors": 0, "expired": 0, "batches": 0},
    }  # fmt: skip


def alloc(model_id: str, device: str, estimated: float, measured: float | None = None) -> dict:
    return {"model_id": model_id, "version": "1.0.0", "device": device,
            "estimated_mb": estimated, "measured_mb": measured,
            "measured_by": "cuda_peak" if measured else None}  # fmt: skip


def cluster_heartbeats() -> list[dict[str, Any]]:
    """hostA: two workers sharing one GPU (NVML index 1, CUDA index 0); hostB: a CPU worker."""
    ident = {"index": 0, "uuid": GPU_A, "name": "NVIDIA H100 80GB HBM3", "total_memory_mb": 81559.0}
    kernel = {"name": "aten::conv2d", "device_type": "cuda", "total_calls": 10,
              "avg_time_ms": 0.5, "total_time_ms": 5.0, "avg_memory_mb": 2.0,
              "last_execution": "2026-11-22T18:00:00Z"}  # fmt: skip
    a = heartbeat(
        "gpu1-a@hostA", "hostA",
        {"shape_detector": model_entry("shape_detector", ok=10, errors=2, in_flight=3,
                                       totals=[3.0] * 10, kernels=[kernel])},
        gpu=ident, nvml_gpus=[reading(1, GPU_A, 40.0, 20_000.0)],
        allocations=[alloc("shape_detector", "cuda:0", 100.0, 180.0)], updated_at=NOW - 2,
    )  # fmt: skip
    b = heartbeat(
        "gpu1-b@hostA", "hostA",
        {"resnet18": model_entry("resnet18", ok=30, in_flight=1, totals=[30.0] * 30,
                                 kernels=[{**kernel, "total_calls": 30, "total_time_ms": 9.0,
                                           "avg_time_ms": 0.3, "avg_memory_mb": 6.0,
                                           "last_execution": "2026-11-22T18:00:05Z"}])},
        gpu=ident, nvml_gpus=[reading(1, GPU_A, 70.0, 21_000.0, proc=1200.0)],
        allocations=[alloc("resnet18", "cuda:0", 50.0)], updated_at=NOW - 1,
    )  # fmt: skip
    c = heartbeat(
        "cpu-1@hostB", "hostB",
        {"shape_detector": model_entry("shape_detector", device="cpu", ok=5, expired=1,
                                       totals=[300.0] * 5),
         "broken": model_entry("broken", state="failed", version="0.1.0", device="cpu")},
        allocations=[alloc("shape_detector", "cpu", 40.0)],
    )  # fmt: skip
    return [a, b, c]


def publish(client: redis.Redis, hb: dict[str, Any], ttl: int = 15) -> None:
    client.set(keys.worker_heartbeat(hb["worker"]), json.dumps(hb), ex=ttl)
    client.sadd(keys.WORKERS, hb["worker"])


def seed_cluster(client: redis.Redis) -> None:
    for hb in cluster_heartbeats():
        publish(client, hb)
    client.sadd(keys.SERVED_MODELS, "shape_detector", "resnet18", "broken")
    client.sadd(keys.WORKERS, "gpu0-1@hostC")  # its heartbeat key has expired
    client.set(keys.worker_heartbeat("junk@hostD"), b"{not json\xff")
    client.sadd(keys.WORKERS, "junk@hostD")


def settings(tmp_path: Path) -> Settings:
    root = tmp_path / "zoo"
    (root / "manifest_only").mkdir(parents=True)
    (root / "manifest_only" / "model.toml").write_text(
        'id = "manifest_only"\nversion = "2.0.0"\nentrypoint = "model:M"\ninput_size = [8, 8]\n'
    )
    return Settings(redis_url="redis://fake:6379/0", models_root=root)


def kombu_message(meta: dict[str, Any], content_type: str = "application/x-msgpack") -> bytes:
    """A kombu Redis-transport envelope, built by hand (protocol 2 body)."""
    body = msgpack.packb([[b"\xff\xd8jpeg", meta], {}, {}], use_bin_type=True)
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "binary",
        "content-type": content_type, "headers": {"task": keys.INFER_TASK},
        "properties": {"body_encoding": "base64", "delivery_tag": "x", "priority": 3},
    }).encode()  # fmt: skip


@pytest.fixture()
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture()
def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


@pytest.fixture()
def producer(server: fakeredis.FakeServer) -> Iterator[Any]:
    """The real FrameProducer, its kombu transport and its Redis client on ``server``."""
    from producer.client import FrameProducer

    original = kombu_redis.Channel._connparams

    def connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        return {**original(self, asynchronous), "connection_class": fakeredis.FakeRedisConnection,
                "server": server}  # fmt: skip

    s = Settings(redis_url="redis://fake:6379/0", models_root=DEFAULT_MODELS_ROOT,
                 max_queue_depth=3, queue_full_policy="drop")  # fmt: skip
    app = create_app(s)
    app.conf.result_backend = "disabled://"
    with mock.patch.object(kombu_redis.Channel, "_connparams", connparams):
        p = FrameProducer(s, app=app)
        p.redis = fakeredis.FakeRedis(server=server)
        yield p
        p.close()


def test_workers_gone_and_garbage(client: fakeredis.FakeRedis, tmp_path: Path) -> None:
    seed_cluster(client)
    snap = ClusterReader(client, settings(tmp_path), clock=Clock()).read()
    by_name = {w.name: w for w in snap.workers}
    assert set(by_name) == {"gpu1-a@hostA", "gpu1-b@hostA", "cpu-1@hostB", "junk@hostD"}
    assert snap.gone == ["gpu0-1@hostC"]
    junk = by_name["junk@hostD"]
    assert (junk.state, junk.hostname, junk.models) == ("invalid", "hostD", {})
    a = by_name["gpu1-a@hostA"]
    assert (a.hostname, a.device, a.age_s, a.gpu and a.gpu["uuid"]) == (
        "hostA",
        "cuda:0",
        2.0,
        GPU_A,
    )
    assert by_name["cpu-1@hostB"].gpu is None and by_name["cpu-1@hostB"].pid > 0
    json.dumps(snap.to_dict())  # JSON-ready
    assert "raw" not in snap.to_dict()["workers"][0]


def test_devices_are_merged_per_host_and_uuid(client: fakeredis.FakeRedis, tmp_path: Path) -> None:
    seed_cluster(client)
    snap = ClusterReader(client, settings(tmp_path), clock=Clock()).read()
    assert snap.gpu_available
    [dev] = snap.devices  # two workers, one GPU; the CPU worker has none
    assert dev.key == f"hostA/{GPU_A}" and dev.index == 1  # NVML's index, not CUDA's
    assert dev.workers == ["gpu1-a@hostA", "gpu1-b@hostA"]
    assert dev.utilization_percent == 70.0 and dev.memory_used_mb == 21_000.0  # newest beat
    assert dev.memory_percent == round(100 * 21_000 / 81_559, 2)
    assert dev.allocated_mb == 180.0 + 50.0  # measured where known, else estimated; not CPU


def test_same_uuid_on_two_hosts_is_two_devices(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    ident = {"index": 0, "uuid": "GPU-x", "name": "T4", "total_memory_mb": 15_000.0}
    for host in ("h1", "h2"):
        publish(client, heartbeat(f"w@{host}", host, {}, gpu=ident,
                                  nvml_gpus=[reading(0, "GPU-x", 5.0, 100.0)]))  # fmt: skip
    publish(client, heartbeat("nonvml@h3", "h3", {}, gpu=ident))  # NVML unreadable there
    snap = ClusterReader(client, settings(tmp_path), clock=Clock()).read()
    assert [d.key for d in snap.devices] == ["h1/GPU-x", "h2/GPU-x", "h3/GPU-x"]
    h3 = snap.devices[2]
    assert (h3.utilization_percent, h3.memory_total_mb, h3.has_reading) == (None, 15_000.0, False)


def test_models_are_aggregated_over_workers(client: fakeredis.FakeRedis, tmp_path: Path) -> None:
    seed_cluster(client)
    snap = ClusterReader(client, settings(tmp_path), clock=Clock()).read()
    assert set(snap.models) == {"shape_detector", "resnet18", "broken", "manifest_only"}
    sd = snap.models["shape_detector"]
    assert sd.workers == ["cpu-1@hostB", "gpu1-a@hostA"] and sd.state == "ready"
    assert (sd.frames, sd.ok, sd.errors, sd.expired, sd.in_flight) == (18, 15, 2, 1, 3)
    total = sd.timings_ms["total"]
    assert total["count"] == 15 and total["sum"] == pytest.approx(10 * 3.0 + 5 * 300.0)
    le5 = dict((le, n) for le, n in total["buckets"])[5]
    assert le5 == 10  # the GPU worker's 3 ms frames; the CPU worker's 300 ms ones are above
    assert sd.timings_ms["queue"]["count"] == 16  # 15 ok + 1 expired frame
    assert sd.frame_size_bytes["count"] == 15 and sd.batch_size_hist["count"] == 3 + 2
    broken = snap.models["broken"]
    assert (broken.state, broken.versions, broken.states) == (
        "failed",
        ["0.1.0"],
        {"cpu-1@hostB": "failed"},
    )
    absent = snap.models["manifest_only"]
    assert (absent.state, absent.workers, absent.frames) == ("absent", [], 0)
    assert quantile_ms(snap.models["resnet18"].timings_ms["total"], 0.5) == 37.5  # all in (25, 50]


def test_kernels_merge_by_name_and_device(client: fakeredis.FakeRedis, tmp_path: Path) -> None:
    seed_cluster(client)
    snap = ClusterReader(client, settings(tmp_path), clock=Clock()).read()
    [row] = snap.kernels()
    assert (row["name"], row["total_calls"], row["total_time_ms"]) == ("aten::conv2d", 40, 14.0)
    assert row["avg_time_ms"] == pytest.approx(14.0 / 40)
    assert row["avg_memory_mb"] == pytest.approx((10 * 2.0 + 30 * 6.0) / 40)
    assert row["last_execution"] == "2026-11-22T18:00:05Z"
    assert row["workers"] == ["gpu1-a@hostA", "gpu1-b@hostA"]
    assert snap.kernels(worker="gpu1-a@hostA")[0]["total_calls"] == 10
    assert snap.kernels(model="resnet18")[0]["models"] == ["resnet18"]
    assert snap.kernels(worker="cpu-1@hostB") == []


def test_queues_from_real_producer_messages(
    client: fakeredis.FakeRedis, producer: Any, tmp_path: Path
) -> None:
    client.sadd(keys.SERVED_MODELS, "shape_detector")  # a worker serves it
    frame = codec.encode_jpeg(np.zeros((48, 64, 3), np.uint8), quality=80)
    sent_at = time.time()
    producer.submit("shape_detector", frame, camera_id="cam1", seq=1)
    producer.submit_many(
        [{"model_id": "shape_detector", "frame": frame, "seq": i} for i in range(4)]
    )
    raw = client.lindex(keys.queue_name("shape_detector"), -1)
    assert sent_at <= (enqueued_at(raw) or 0) <= time.time()  # a real kombu envelope
    # an older frame at a higher priority, and garbage at another priority
    lists = keys.queue_lists("shape_detector")
    client.lpush(
        lists[1], kombu_message({"model_id": "shape_detector", "enqueued_at": sent_at - 30})
    )
    client.lpush(lists[2], b"garbage", b"\x00\x01")
    client.set(lists[3], "not a list")  # WRONGTYPE for LLEN/LINDEX: ignored
    reader = ClusterReader(client, settings(tmp_path), clock=Clock(sent_at + 5))
    q = reader.read().queues["shape_detector"]
    assert q.queue == keys.queue_name("shape_detector")
    assert q.depth == 3 + 1 + 2  # max_queue_depth=3 let three real frames in
    assert q.dropped == {"queue_full": 2}  # the producer's drop counter
    assert q.oldest_age_s == pytest.approx(35.0, abs=0.01)


def test_queue_of_a_model_only_a_heartbeat_names(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    publish(client, heartbeat("w@h", "h", {"adhoc": model_entry("adhoc", device="cpu")}))
    client.lpush(keys.queue_name("adhoc"), kombu_message({"enqueued_at": NOW - 2.5}))
    client.hset(keys.dropped_counter("adhoc"), mapping={"queue_full": 4, "bad": "x"})
    snap = ClusterReader(client, settings(tmp_path), clock=Clock()).read()
    q = snap.queues["adhoc"]
    assert (q.depth, q.oldest_age_s, q.dropped) == (1, 2.5, {"queue_full": 4})
    assert (
        snap.queues["manifest_only"].depth == 0
        and snap.queues["manifest_only"].oldest_age_s is None
    )


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"[]", b"{}", b'{"body": 5}', b'{"body": "!!!"}', b"\xff\xfe",
     kombu_message({"enqueued_at": "yesterday"}), kombu_message({"enqueued_at": float("nan")}),
     json.dumps({"body": base64.b64encode(b"\xc1").decode()}).encode()],
)  # fmt: skip
def test_enqueued_at_tolerates_garbage(raw: Any) -> None:
    assert enqueued_at(raw) is None


def test_enqueued_at_reads_json_bodies_too() -> None:
    msg = json.loads(kombu_message({"enqueued_at": 12.5}))
    msg["body"] = base64.b64encode(json.dumps([[None, {"enqueued_at": 12.5}], {}, {}]).encode())
    msg["body"], msg["content-type"] = msg["body"].decode(), "application/json"
    assert enqueued_at(json.dumps(msg)) == 12.5


def test_gone_workers_are_forgotten_after_ten_minutes(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    client.sadd(keys.WORKERS, "dead@h")
    clock = Clock()
    reader = ClusterReader(client, settings(tmp_path), clock=clock)
    assert reader.read().gone == ["dead@h"]
    clock.t += GONE_FORGET_S - 1
    assert reader.read().gone == ["dead@h"] and client.sismember(keys.WORKERS, "dead@h")
    clock.t += 1
    assert reader.read().gone == [] and not client.sismember(keys.WORKERS, "dead@h")
    publish(client, heartbeat("dead@h", "h", {}))  # it comes back: live, not gone
    assert [w.name for w in reader.read().workers] == ["dead@h"]


def test_read_takes_three_round_trips_for_40_workers_then_one(tmp_path: Path) -> None:
    executes: list[int | str] = []

    class Counting(fakeredis.FakeRedis):
        fetched_last: list[str] = []

        def mget(self, *a: Any, **k: Any) -> Any:
            executes.append("mget")
            self.fetched_last = sorted(k_.rpartition(":")[2] for k_ in a[0])
            return super().mget(*a, **k)

        def pipeline(self, *a: Any, **k: Any) -> Any:
            pipe = super().pipeline(*a, **k)
            original = pipe.execute

            def execute(*ea: Any, **ek: Any) -> Any:
                executes.append(len(pipe))
                return original(*ea, **ek)

            pipe.execute = execute
            return pipe

    client = Counting()
    models = [f"m{i}" for i in range(5)]
    client.sadd(keys.SERVED_MODELS, *models)
    for i in range(40):
        publish(client, heartbeat(f"w{i}@h", "h", {m: model_entry(m) for m in models}))
    reader = ClusterReader(client, settings(tmp_path), clock=Clock())
    snap = reader.read()
    assert len(snap.workers) == 40 and snap.models["m0"].frames == 40 * 20
    # a new reader: SMEMBERS x2; MGET of the (new) heartbeats; all 4 lists of each model
    assert executes == [2, "mget", 6 * (2 * 4 + 1)]  # 5 served models, 1 manifest
    reader.read()  # SMEMBERS x2, GETRANGE of each heartbeat and the queue commands at once:
    # LLEN, LINDEX of each queue, HGETALL of its drops, one EXISTS of the priority sub-lists
    assert executes[3:] == [2 + 40 + 6 * 3 + 1]  # no heartbeat changed: no MGET
    publish(client, heartbeat("w7@h", "h", {m: model_entry(m) for m in models}, updated_at=NOW))
    publish(client, heartbeat("w40@h", "h", {"m9": model_entry("m9")}))
    snap = reader.read()
    assert len(snap.workers) == 41 and snap.queues["m9"].depth == 0
    # the known ones at once; MGET of the changed and the new heartbeat; a new model's queues
    assert executes[4:] == [2 + 40 + 6 * 3 + 1, "mget", 2 * 4 + 1]
    assert client.fetched_last == ["w40@h", "w7@h"]


def test_priority_sub_lists_are_read_while_they_hold_frames(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    client.sadd(keys.SERVED_MODELS, "m")
    main, sub3, sub6, _ = keys.queue_lists("m")
    client.lpush(main, kombu_message({"enqueued_at": NOW - 2.0}))
    clock = Clock()
    reader = ClusterReader(client, settings(tmp_path), clock=clock)
    assert reader.read().queues["m"].depth == 1
    assert reader.read().queues["m"].oldest_age_s == pytest.approx(2.0)
    client.lpush(sub6, kombu_message({"enqueued_at": NOW - 9.0}), b"garbage")
    q = reader.read().queues["m"]  # EXISTS counted one: read in a second round trip
    assert (q.depth, q.oldest_age_s) == (3, pytest.approx(9.0))
    client.lpush(sub3, kombu_message({"enqueued_at": NOW - 1.0}))
    q = reader.read().queues["m"]  # sub6 read directly now, sub3 found by EXISTS
    assert (q.depth, q.oldest_age_s) == (4, pytest.approx(9.0))
    client.delete(sub6)
    client.rpop(main)
    q = reader.read().queues["m"]
    assert (q.depth, q.oldest_age_s) == (1, pytest.approx(1.0))
    client.delete(sub3)
    q = reader.read().queues["m"]
    assert (q.depth, q.oldest_age_s) == (0, None)
    client.lpush(sub3, kombu_message({"enqueued_at": NOW - 4.0}))
    assert reader.read().queues["m"].oldest_age_s == pytest.approx(4.0)


def test_unreachable_redis_raises_redis_error(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    with pytest.raises(redis.RedisError):
        ClusterReader(fakeredis.FakeRedis(server=server), settings(tmp_path)).read()


def test_quantile_ms_interpolates_like_promql() -> None:
    h = {"buckets": [[1, 0], [2, 10], [4, 30]], "sum": 100.0, "count": 40}
    assert quantile_ms(h, 0.25) == 2.0  # rank 10: top of the (1, 2] bucket
    assert quantile_ms(h, 0.5) == 3.0  # rank 20: halfway through (2, 4]
    assert quantile_ms(h, 0.99) == 4.0  # in +Inf: the highest finite bound
    assert quantile_ms(h, 0.0) == 1.0
    assert quantile_ms(h, 1.5) is None and quantile_ms({"count": 0}, 0.5) is None
    assert quantile_ms("garbage", 0.5) is None


def test_histograms_merge_and_clean() -> None:
    a = {"buckets": [[1, 1], [5, 3]], "sum": 6.0, "count": 4}
    b = {"buckets": [[1, 2], [5, 2]], "sum": 2.0, "count": 2}
    assert histograms.merge([a, b]) == {"buckets": [[1, 3], [5, 5]], "sum": 8.0, "count": 6}
    c = {"buckets": [[2, 1]], "sum": 1.0, "count": 1}  # other bounds: union, exact per bound
    assert histograms.merge([a, c])["buckets"] == [[1, 1], [2, 2], [5, 4]]
    messy = {"buckets": [[5, 2], ["x", 1], [1, 3], [2, None]], "sum": "?", "count": 1}
    assert histograms.clean(messy) == {"buckets": [[1, 3], [5, 3]], "sum": 0.0, "count": 3}
    assert histograms.merge([None, 7]) == histograms.empty()


@pytest.mark.parametrize("frame_bytes", [0, 1, 2, 3, 200, 255, 256, 70_000, 70_001, 70_002])
def test_enqueued_at_decodes_only_around_the_frame_and_agrees_with_a_whole_decode(
    frame_bytes: int,
) -> None:
    """kombu's envelope, body first, binary frame (bin8/16/32): the quick path reads the meta."""
    from monitoring.queues import _quick_meta

    meta = {"model_id": "m", "enqueued_at": NOW - 3.25, "camera_id": "c"}
    body = msgpack.packb([[b"\xff" * frame_bytes, meta], {}, {"chain": None}], use_bin_type=True)
    raw = json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "binary",
        "content-type": "application/x-msgpack", "headers": {"task": keys.INFER_TASK},
        "properties": {"body_encoding": "base64", "delivery_tag": "x", "priority": 0},
    }).encode()  # fmt: skip
    assert _quick_meta(raw) == meta
    assert enqueued_at(raw) == NOW - 3.25
    # the same message not body first: read whole, same answer
    envelope = json.loads(raw)
    reordered = json.dumps({"headers": envelope.pop("headers"), **envelope}).encode()
    assert _quick_meta(reordered) is None and enqueued_at(reordered) == NOW - 3.25


def test_a_queue_head_is_decoded_once_while_it_stays_the_oldest(
    tmp_path: Path, client: fakeredis.FakeRedis
) -> None:
    client.lpush(keys.queue_name("adhoc"), kombu_message({"enqueued_at": NOW - 2.5}))
    client.sadd(keys.SERVED_MODELS, "adhoc")
    reader = ClusterReader(client, settings(tmp_path), clock=Clock())
    with mock.patch("monitoring.queues.enqueued_at", wraps=enqueued_at) as decode:
        assert reader.read().queues["adhoc"].oldest_age_s == 2.5
        assert reader.read().queues["adhoc"].oldest_age_s == 2.5
        assert decode.call_count == 1
        client.rpop(keys.queue_name("adhoc"))
        client.lpush(keys.queue_name("adhoc"), kombu_message({"enqueued_at": NOW - 1.0}))
        assert reader.read().queues["adhoc"].oldest_age_s == 1.0
        assert decode.call_count == 2
