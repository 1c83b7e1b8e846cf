"""The monitor over real HTTP and WebSockets, with a real Redis and a real worker process.

GPU readings come from fake heartbeats (tests/heartbeats.py) because this
machine has no GPU: that is the "fake NVML" the alert rules are tested on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets
from prometheus_client.parser import text_string_to_metric_families

from framepool import codec, keys
from framepool.settings import Settings
from producer import FrameProducer
from producer.sources.synthetic import SyntheticCamera
from tests.contract import REFERENCE_METRICS
from tests.faults import wait_for
from tests.heartbeats import gpu_heartbeat, publish
from tests.services import ServiceProcess

TOKEN = "monitor-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# counters lose _total in the parser's family names
REFERENCE_FAMILIES = tuple(m.removesuffix("_total") for m in REFERENCE_METRICS)


class Monitor(ServiceProcess):
    """``framepool monitor`` with a token and a fast poll."""

    def __init__(self, redis_url: str, log_path: Path, **env: str) -> None:
        super().__init__(
            "monitor",
            {
                "REDIS_URL": redis_url,
                "API_TOKEN": TOKEN,
                "MONITOR_POLL_INTERVAL_SECONDS": "0.2",
                **env,
            },
            log_path,
            ready_path="/ready",
        )

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=kw.pop("headers", AUTH), timeout=10, **kw)


@pytest.fixture()
def start_monitor(redis_url: str, tmp_path: Path) -> Iterator:
    started: list[Monitor] = []

    def _start(**env: str) -> Monitor:
        m = Monitor(redis_url, tmp_path / f"monitor-{len(started)}.log", **env)
        started.append(m)
        return m

    yield _start
    for m in started:
        m.stop()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_value(fams: dict[str, Any], name: str, sample: str, **labels: str) -> float:
    total = 0.0
    for s in fams[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def test_metrics_health_and_api_follow_a_real_worker(
    settings: Settings, redis_url: str, start_worker, start_monitor
) -> None:
    start_worker(
        ["shape_detector"],
        extra=["--name", "mon@test"],
        HEARTBEAT_INTERVAL_SECONDS="0.3",
        PROFILE_EVERY_N_BATCHES="1",
    )
    mon = start_monitor()
    wait_for(lambda: mon.get("/health").json()["workers_up"] == 1)
    before = families(httpx.get(f"{mon.url}/metrics").text)  # open without a token
    for name in REFERENCE_FAMILIES:
        assert name in before, name
    sent_before = sample_value(
        before, "inference_requests", "inference_requests_total", model_id="shape_detector"
    )
    image = codec.encode_jpeg(SyntheticCamera("m", 320, 240, seed=2).frame(0).image)
    with FrameProducer(settings) as p:
        results = [
            p.submit("shape_detector", image, camera_id="m").get(timeout=30) for _ in range(6)
        ]
    assert all(r.ok for r in results)

    def moved() -> dict[str, Any] | None:
        fams = families(httpx.get(f"{mon.url}/metrics").text)
        n = sample_value(
            fams,
            "inference_requests",
            "inference_requests_total",
            model_id="shape_detector",
            status="success",
        )
        return fams if n >= sent_before + 6 else None

    fams = wait_for(moved)
    assert sample_value(fams, "framepool_worker_up", "framepool_worker_up", worker="mon@test") == 1
    assert sample_value(fams, "inference_duration_seconds", "inference_duration_seconds_count") >= 6
    assert sample_value(fams, "frame_size_bytes", "frame_size_bytes_count") >= 6
    assert "celery_queue_length" in fams

    health = mon.get("/health").json()
    assert health["status"] == "healthy" and health["models_ready"] == 1
    assert health["models_loaded"] == 1 and health["workers_up"] == 1
    verbose = mon.get("/health", params={"verbose": "true"}).json()
    (model,) = [m for m in verbose["models"] if m["model_id"] == "shape_detector"]
    assert model["state"] == "ready" and model["inference_count"] >= 6
    assert verbose["gpu_available"] is False and verbose["gpu_devices"] == []

    status = mon.get("/api/v1/gpu/status").json()
    assert status["gpu_available"] is False and status["gpu_utilization"] is None
    assert status["memory"] == {"used_mb": None, "total_mb": None, "percent": None}

    kernels = wait_for(
        lambda: mon.get("/api/v1/gpu/kernels", params={"sort_by": "calls", "limit": 50}).json()[
            "kernels"
        ]
    )
    calls = [k["total_calls"] for k in kernels]
    assert calls == sorted(calls, reverse=True) and any("conv" in k["name"] for k in kernels)
    by_avg = mon.get("/api/v1/gpu/kernels", params={"sort_by": "avg_time"}).json()["kernels"]
    avgs = [k["avg_time_ms"] for k in by_avg]
    assert avgs == sorted(avgs, reverse=True)
    floor = sorted(calls)[len(calls) // 2]
    assert all(
        k["total_calls"] >= floor
        for k in mon.get("/api/v1/gpu/kernels", params={"min_calls": floor}).json()["kernels"]
    )
    assert mon.get("/api/v1/gpu/kernels", params={"model": "nope"}).json()["kernels"] == []
    bad = mon.get("/api/v1/gpu/kernels", params={"sort_by": "speed"})
    assert bad.status_code == 422 and "sort_by" in bad.text
    assert mon.get("/api/v1/gpu/kernels", params={"limit": 0}).status_code == 422

    workers = mon.get("/api/v1/workers").json()["workers"]
    assert [w["name"] for w in workers] == ["mon@test"]
    models = {m["model_id"]: m for m in mon.get("/api/v1/models").json()["models"]}
    assert models["shape_detector"]["state"] == "ready"
    queues = {q["model_id"]: q for q in mon.get("/api/v1/queues").json()["queues"]}
    assert queues["shape_detector"]["queue"] == keys.queue_name("shape_detector")
    assert mon.get("/api/v1/gpu/report").json()["summary"]["total_kernel_calls"] > 0


def test_token_rate_limit_and_docs(redis_url: str, start_monitor) -> None:
    mon = start_monitor(RATE_LIMIT_PER_SECOND="1", RATE_LIMIT_BURST="5")
    assert mon.get("/api/v1/gpu/status", headers={}).status_code == 401
    assert (
        mon.get("/api/v1/gpu/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    assert httpx.get(f"{mon.url}/api/v1/gpu/status", params={"token": TOKEN}).status_code == 200
    assert httpx.get(f"{mon.url}/metrics").status_code == 200
    assert httpx.get(f"{mon.url}/health").status_code in (200, 503)  # open; 503: nothing serving
    codes = [mon.get("/api/v1/queues").status_code for _ in range(12)]
    assert 429 in codes and codes[0] == 200
    limited = next(r for r in (mon.get("/api/v1/queues") for _ in range(3)) if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert httpx.get(f"{mon.url}/docs").status_code == 200


def test_alerts_fire_and_resolve_on_injected_gpu_readings(redis_url: str, start_monitor) -> None:
    client = redis.Redis.from_url(redis_url)
    hb = gpu_heartbeat("gpu0-1@hostA", mem_used_mb=80_000.0, mem_total_mb=81_559.0)
    publish(client, hb)
    mon = start_monitor()

    def active() -> list[dict[str, Any]]:
        body = mon.get("/api/v1/gpu/alerts", params={"severity": "critical"}).json()
        return [
            a for a in body["alerts"] if a["state"] == "active" and a["metric"] == "memory_usage"
        ]

    fired = wait_for(active)
    assert fired[0]["severity"] == "critical" and fired[0]["value"] > 95
    body = mon.get("/api/v1/gpu/alerts").json()
    assert body["active_alerts"] >= 1 and body["total_alerts_today"] >= 1
    fams = families(httpx.get(f"{mon.url}/metrics").text)
    assert (
        sample_value(fams, "framepool_alert_active", "framepool_alert_active", severity="critical")
        >= 1
    )
    assert sample_value(fams, "gpu_memory_used_bytes", "gpu_memory_used_bytes") == 80_000.0 * 2**20

    hb["nvml"]["gpus"][0]["memory_used_mb"] = 10_000.0
    publish(client, hb)
    wait_for(lambda: not active())
    resolved = mon.get("/api/v1/gpu/alerts", params={"severity": "critical"}).json()["alerts"]
    assert any(a["state"] == "resolved" and a["metric"] == "memory_usage" for a in resolved)
    assert mon.get("/api/v1/gpu/alerts", params={"severity": "loud"}).status_code == 422


async def _collect(url: str, n: int, send: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    async with websockets.connect(url) as ws:
        if send is not None:
            await ws.send(json.dumps(send))
        out: list[dict[str, Any]] = []
        while len(out) < n:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if msg["type"] == "gpu_metrics":
                out.append(msg)
        return out


def test_stream_at_1hz_with_filters_cap_and_token(redis_url: str, start_monitor) -> None:
    client = redis.Redis.from_url(redis_url)
    publish(client, gpu_heartbeat("gpu0-1@hostA"))
    publish(client, gpu_heartbeat("gpu1-1@hostB", host="hostB", gpu_index=1))
    mon = start_monitor(MONITOR_POLL_INTERVAL_SECONDS="1.0", WS_MAX_CONNECTIONS="100")
    ws_url = f"ws://127.0.0.1:{mon.port}/api/v1/gpu/stream?token={TOKEN}"

    msgs = asyncio.run(_collect(ws_url, 4))
    assert all(m["gpu_available"] is True for m in msgs)
    assert {d["hostname"] for d in msgs[-1]["devices"]} == {"hostA", "hostB"}
    stamps = [time.mktime(time.strptime(m["timestamp"], "%Y-%m-%dT%H:%M:%SZ")) for m in msgs[1:]]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(0 <= g <= 2 for g in gaps), gaps  # one message a second

    filtered = asyncio.run(_collect(ws_url, 2, {"subscribe": {"workers": ["gpu1-1@hostB"]}}))
    assert [w["name"] for w in filtered[-1]["workers"]] == ["gpu1-1@hostB"]
    assert [d["hostname"] for d in filtered[-1]["devices"]] == ["hostB"]

    async def refused_without_token() -> bool:
        try:
            async with websockets.connect(ws_url.split("?")[0]) as ws:
                await asyncio.wait_for(ws.recv(), 5)
        except (websockets.exceptions.InvalidStatus, websockets.exceptions.ConnectionClosed):
            return True
        return False

    assert asyncio.run(refused_without_token())

    async def hundred_and_one() -> tuple[int, bool]:
        clients = [await websockets.connect(ws_url) for _ in range(100)]
        try:
            got = await asyncio.gather(*(asyncio.wait_for(c.recv(), 10) for c in clients))
            try:
                extra = await websockets.connect(ws_url)
                await extra.close()
                refused = False
            except websockets.exceptions.InvalidStatus:
                refused = True
            return len([g for g in got if json.loads(g)["type"] == "gpu_metrics"]), refused
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    received, refused = asyncio.run(hundred_and_one())
    assert received == 100 and refused
