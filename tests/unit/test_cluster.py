"""ClusterReader on fakeredis: heartbeats, GPUs per device, models, kernels, gone workers.

The heartbeats are built with the workers' own ``ModelStats`` (so histograms have
the real bucket format). The builders here (``heartbeat``, ``model_entry``,
``kombu_message``, ...) are shared with the other monitoring tests; the queues are
tested in test_cluster_queues.py, the envelope and histogram decoding in
test_cluster_decoding.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import fakeredis
import msgpack
import pytest
import redis

from framepool import keys
from framepool.settings import Settings
from monitoring.cluster import GONE_FORGET_S, ClusterReader, quantile_ms
from tests.unit.fake_redis import client as client
from tests.unit.fake_redis import server as server
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


def test_unreachable_redis_raises_redis_error(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    with pytest.raises(redis.RedisError):
        ClusterReader(fakeredis.FakeRedis(server=server), settings(tmp_path)).read()
