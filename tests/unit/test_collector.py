"""FramepoolCollector: every reference metric and framepool's own, from a ClusterSnapshot."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

from framepool import keys
from monitoring.cluster import ClusterReader, ClusterSnapshot
from monitoring.collector import FramepoolCollector, make_registry, render
from tests.unit.test_cluster import (
    GPU_A,
    NOW,
    Clock,
    cluster_heartbeats,
    heartbeat,
    kombu_message,
    model_entry,
    publish,
    reading,
    seed_cluster,
    settings,
)

MB = 1024 * 1024
#: The fifteen metrics of the first reference document (parser family names:
#: a counter's family drops its ``_total``).
REFERENCE = [
    "inference_requests", "inference_duration_seconds", "inference_queue_size",
    "concurrent_requests_active", "model_load_status", "model_health_status",
    "model_inference_count", "model_error_count", "gpu_memory_used_bytes",
    "gpu_memory_total_bytes", "gpu_memory_reserved_bytes", "gpu_utilization_percent",
    "gpu_temperature_celsius", "frame_decode_duration_seconds", "frame_size_bytes",
]  # fmt: skip
EXTRAS = [
    "framepool_queue_depth", "framepool_queue_oldest_age_seconds", "framepool_frames_dropped",
    "framepool_batch_size", "framepool_batch_wait_seconds", "framepool_stage_duration_seconds",
    "framepool_worker_up", "framepool_alert_active", "framepool_gpu_power_watts",
    "framepool_worker_process_gpu_memory_bytes", "celery_queue_length",
]  # fmt: skip


def scrape(
    snap: ClusterSnapshot | None, alerts: list[Any] | None = None
) -> dict[str, list[Sample]]:
    text = render(make_registry(lambda: snap, lambda: alerts or [])).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str | None = None, **labels: str) -> float:
    found = [
        s.value
        for s in samples
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


@pytest.fixture()
def cluster(tmp_path: Path) -> tuple[fakeredis.FakeRedis, ClusterReader]:
    client = fakeredis.FakeRedis()
    seed_cluster(client)
    client.lpush(keys.queue_name("resnet18"), kombu_message({"enqueued_at": NOW - 4.0}))
    client.lpush(keys.queue_name("resnet18"), kombu_message({"enqueued_at": NOW - 1.0}))
    client.hset(keys.dropped_counter("resnet18"), mapping={"queue_full": 7, "expired": 2})
    return client, ClusterReader(client, settings(tmp_path), clock=Clock())


def test_every_reference_name_and_extra_is_exported(cluster: Any) -> None:
    _, reader = cluster
    alerts = [{"rule": "worker_missing", "severity": "critical", "subject": "gpu0-1@hostC"}]
    fams = scrape(reader.read(), alerts)
    for name in REFERENCE + EXTRAS:
        assert fams.get(name), f"{name} missing or without samples"


def test_request_and_model_series(cluster: Any) -> None:
    _, reader = cluster
    fams = scrape(reader.read())
    req = fams["inference_requests"]
    a = {"model_id": "shape_detector", "worker": "gpu1-a@hostA"}
    assert value(req, **a, status="success") == 10 and value(req, **a, status="failed") == 2
    cpu = {"model_id": "shape_detector", "worker": "cpu-1@hostB"}
    assert value(req, **cpu, status="expired") == 1
    assert value(req, model_id="resnet18", worker="", status="rejected") == 7
    assert value(fams["concurrent_requests_active"], worker="gpu1-a@hostA") == 3
    mv = {"model_id": "broken", "version": "0.1.0", "worker": "cpu-1@hostB"}
    assert value(fams["model_load_status"], **mv) == 0
    assert value(fams["model_health_status"], **mv) == -1
    ok = {"model_id": "shape_detector", "version": "1.0.0", "worker": "gpu1-a@hostA"}
    assert value(fams["model_load_status"], **ok) == 1
    assert value(fams["model_health_status"], **ok) == 1
    assert value(fams["model_inference_count"], **ok) == 12
    assert value(fams["model_error_count"], **ok) == 2


def test_histograms_are_in_seconds_and_cumulative(cluster: Any) -> None:
    _, reader = cluster
    fams = scrape(reader.read())
    d = fams["inference_duration_seconds"]
    b = {"model_id": "resnet18"}  # one worker (gpu1-b@hostA): 30 frames of 30 ms
    assert value(d, "inference_duration_seconds_bucket", **b, le="0.025") == 0
    assert value(d, "inference_duration_seconds_bucket", **b, le="0.05") == 30
    assert value(d, "inference_duration_seconds_bucket", **b, le="+Inf") == 30
    assert value(d, "inference_duration_seconds_sum", **b) == pytest.approx(0.9)
    assert value(d, "inference_duration_seconds_count", **b) == 30
    decode = fams["frame_decode_duration_seconds"]
    assert value(decode, "frame_decode_duration_seconds_bucket", **b, le="0.001") == 0
    assert value(decode, "frame_decode_duration_seconds_bucket", **b, le="0.0025") == 30
    wait = fams["framepool_batch_wait_seconds"]
    assert value(wait, "framepool_batch_wait_seconds_bucket", **b, le="0.0005") == 30
    size = fams["frame_size_bytes"]
    assert value(size, "frame_size_bytes_bucket", **b, le="32768.0") == 0
    assert value(size, "frame_size_bytes_bucket", **b, le="65536.0") == 30
    batches = fams["framepool_batch_size"]
    # 30 frames in batches of 4: seven of 4 and one of 2
    assert value(batches, "framepool_batch_size_bucket", **b, le="1.0") == 0
    assert value(batches, "framepool_batch_size_bucket", **b, le="2.0") == 1
    assert value(batches, "framepool_batch_size_bucket", **b, le="4.0") == 8
    assert value(batches, "framepool_batch_size_sum", **b) == 30
    stages = {s.labels["stage"] for s in fams["framepool_stage_duration_seconds"]}
    assert {"queue", "decode", "inference", "total", "batch_wait"} <= stages


def test_histograms_are_per_model_summed_over_its_workers(cluster: Any) -> None:
    _, reader = cluster
    fams = scrape(reader.read())
    sd = {"model_id": "shape_detector"}  # gpu1-a: 10 ok of 3 ms; cpu-1: 5 ok of 300 ms
    d = fams["inference_duration_seconds"]
    assert value(d, "inference_duration_seconds_count", **sd) == 15
    assert value(d, "inference_duration_seconds_bucket", **sd, le="0.005") == 10
    assert value(d, "inference_duration_seconds_sum", **sd) == pytest.approx(1.53)
    stage = fams["framepool_stage_duration_seconds"]
    # the 1 expired frame of cpu-1 only has a queue time (900 ms)
    assert value(stage, "framepool_stage_duration_seconds_count", **sd, stage="queue") == 16
    assert value(fams["frame_size_bytes"], "frame_size_bytes_count", **sd) == 15
    for family in ("inference_duration_seconds", "frame_size_bytes", "framepool_batch_size",
                   "framepool_batch_wait_seconds", "framepool_stage_duration_seconds",
                   "frame_decode_duration_seconds"):  # fmt: skip
        assert all("worker" not in s.labels for s in fams[family]), family
        assert {s.labels["model_id"] for s in fams[family]} == {"shape_detector", "resnet18"}


def test_histograms_never_drop_when_workers_leave_or_restart(cluster: Any) -> None:
    client, reader = cluster
    count = "inference_duration_seconds_count"
    first = scrape(reader.read())["inference_duration_seconds"]
    assert value(first, count, model_id="resnet18") == 30
    client.delete(keys.worker_heartbeat("gpu1-b@hostA"))  # resnet18's only worker stops
    gone = scrape(reader.read())["inference_duration_seconds"]
    assert value(gone, count, model_id="resnet18") == 30
    # it comes back as a new process (new pid) that has seen 4 frames so far
    [_, b, _] = cluster_heartbeats()
    b.update(pid=99, started_at=NOW - 1)
    b["models"]["resnet18"] = model_entry("resnet18", ok=4, totals=[30.0] * 4)
    publish(client, b)
    back = scrape(reader.read())["inference_duration_seconds"]
    assert value(back, count, model_id="resnet18") == 34
    # shape_detector's cpu worker restarts: counted once as gone, then its new self
    [a, _, c] = cluster_heartbeats()
    c.update(pid=77, started_at=NOW - 1, updated_at=NOW - 0.5)
    c["models"]["shape_detector"] = model_entry("shape_detector", device="cpu", ok=1)
    publish(client, c)
    after = scrape(reader.read())["inference_duration_seconds"]
    assert value(after, count, model_id="shape_detector") == 10 + 5 + 1


def test_gpu_series_are_labelled_by_device_key(cluster: Any) -> None:
    _, reader = cluster
    fams = scrape(reader.read())
    g = {"gpu": f"hostA/{GPU_A}", "hostname": "hostA", "uuid": GPU_A}
    assert value(fams["gpu_utilization_percent"], **g) == 70.0
    assert value(fams["gpu_memory_used_bytes"], **g) == 21_000.0 * MB
    assert value(fams["gpu_memory_total_bytes"], **g) == 81_559.0 * MB
    assert value(fams["gpu_memory_reserved_bytes"], **g) == 230.0 * MB
    assert value(fams["gpu_temperature_celsius"], **g) == 61.0
    assert value(fams["framepool_gpu_power_watts"], **g) == 310.5
    assert len(fams["gpu_utilization_percent"]) == 1  # two workers, one GPU
    proc = fams["framepool_worker_process_gpu_memory_bytes"]
    assert value(proc, worker="gpu1-b@hostA", gpu=f"hostA/{GPU_A}") == 1200.0 * MB
    assert value(proc, worker="gpu1-a@hostA", gpu=f"hostA/{GPU_A}") == 900.0 * MB


def test_queue_worker_and_alert_series(cluster: Any) -> None:
    _, reader = cluster
    alerts = [
        SimpleNamespace(
            rule="gpu_temperature", severity="warning", subject="hostA/x", state="active"
        ),
        {"rule": "queue_growth", "severity": "warning", "subject": "resnet18"},
        {"rule": "old", "severity": "warning", "subject": "s", "state": "resolved"},
    ]
    fams = scrape(reader.read(), alerts)
    assert value(fams["inference_queue_size"], model_id="resnet18") == 2
    assert value(fams["framepool_queue_depth"], model_id="resnet18") == 2
    assert value(fams["framepool_queue_oldest_age_seconds"], model_id="resnet18") == 4.0
    assert value(fams["framepool_queue_oldest_age_seconds"], model_id="broken") == 0.0
    assert value(fams["celery_queue_length"], queue_name="framepool.infer.resnet18") == 2
    dropped = fams["framepool_frames_dropped"]
    assert value(dropped, model_id="resnet18", reason="queue_full") == 7
    assert value(dropped, model_id="resnet18", reason="expired") == 2
    up = fams["framepool_worker_up"]
    assert value(up, worker="gpu1-a@hostA", hostname="hostA") == 1
    assert value(up, worker="gpu0-1@hostC", hostname="hostC") == 0
    active = {(s.labels["rule"], s.labels["subject"]) for s in fams["framepool_alert_active"]}
    assert active == {("gpu_temperature", "hostA/x"), ("queue_growth", "resnet18")}


def test_a_worker_that_disappears_takes_its_series_with_it(cluster: Any) -> None:
    client, reader = cluster
    registry = make_registry(reader.read)
    before = render(registry).decode()
    assert 'worker="gpu1-b@hostA"' in before
    client.delete(keys.worker_heartbeat("gpu1-b@hostA"))
    after = render(registry).decode()
    lines = [line for line in after.splitlines() if 'worker="gpu1-b@hostA"' in line]
    assert lines == ['framepool_worker_up{hostname="hostA",worker="gpu1-b@hostA"} 0.0']
    fams = {f.name: f.samples for f in text_string_to_metric_families(after)}
    g = {"gpu": f"hostA/{GPU_A}"}
    assert value(fams["gpu_utilization_percent"], **g) == 40.0  # the other worker's reading now


def test_no_gpu_means_gpu_families_without_samples(tmp_path: Path) -> None:
    client = fakeredis.FakeRedis()
    publish(client, heartbeat("cpu-1@h", "h", {"m": model_entry("m", device="cpu")}))
    fams = scrape(ClusterReader(client, settings(tmp_path), clock=Clock()).read())
    for name in ("gpu_memory_used_bytes", "gpu_memory_total_bytes", "gpu_memory_reserved_bytes",
                 "gpu_utilization_percent", "gpu_temperature_celsius"):  # fmt: skip
        assert name in fams and fams[name] == []
    assert fams["inference_requests"]


def test_a_failing_snapshot_or_alerts_callable_never_breaks_a_scrape() -> None:
    def boom() -> Any:
        raise RuntimeError("redis down")

    text = render(make_registry(boom, boom)).decode()
    fams = {f.name: f.samples for f in text_string_to_metric_families(text)}
    assert set(REFERENCE) <= set(fams) and all(not s for s in fams.values())
    assert scrape(None) and scrape(ClusterSnapshot.empty())


def test_the_same_snapshot_is_built_once(cluster: Any) -> None:
    _, reader = cluster
    snap = reader.read()
    collector = FramepoolCollector(lambda: snap)
    first = list(collector.collect())
    assert list(collector.collect()) == first and list(collector.collect())[0] is first[0]


def test_text_is_what_prometheus_client_writes(cluster: Any) -> None:
    """/metrics uses FramepoolCollector.text(), a quicker writer: byte for byte generate_latest."""
    _, reader = cluster
    snap = reader.read()
    alerts = [{"rule": "r", "severity": "warning", "subject": 'odd "name"\\ with\nnewline'}]
    collector = FramepoolCollector(lambda: snap, lambda: alerts)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    text = collector.text()
    assert text == render(registry) and b'subject="odd \\"name\\"' in text
    assert collector.text() is text  # written once per snapshot
    empty = FramepoolCollector(lambda: None)
    assert empty.text() == render(make_registry(lambda: None))


def test_histogram_series_do_not_grow_with_the_number_of_workers(tmp_path: Path) -> None:
    """8 GPUs x 4 workers x 5 models export as many histogram series as 1 worker does."""
    models = [f"model{i}" for i in range(5)]
    config = settings(tmp_path)

    def histogram_samples(gpus: int, per_gpu: int) -> tuple[int, int]:
        client = fakeredis.FakeRedis()
        for g in range(gpus):
            uuid = f"GPU-0000-{g:04d}"
            ident = {"index": 0, "uuid": uuid, "name": "H100", "total_memory_mb": 81559.0}
            for w in range(per_gpu):
                entries = {m: model_entry(m, ok=40, errors=1, expired=1) for m in models}
                publish(client, heartbeat(f"gpu{g}-{w}@host", "host", entries, gpu=ident,
                                          nvml_gpus=[reading(g, uuid, 50.0, 30_000.0)]))  # fmt: skip
        text = render(make_registry(ClusterReader(client, config, clock=Clock()).read))
        fams = list(text_string_to_metric_families(text.decode()))
        hist = sum(len(f.samples) for f in fams if f.type == "histogram")
        return hist, sum(len(f.samples) for f in fams)

    one_hist, one_all = histogram_samples(1, 1)
    many_hist, many_all = histogram_samples(8, 4)
    assert many_hist == one_hist > 0
    assert many_all < 2_600  # 7 counters and gauges per worker and model, per model histograms
