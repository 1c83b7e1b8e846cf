"""Fake live workers for the dashboard's browser test: two workers' heartbeats (a GPU
worker with NVML readings and CUDA kernels, a CPU worker) and a few queued frames,
rewritten in a real Redis every half second, as live workers would."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import Any

import msgpack
import redis

from framepool import keys

HEARTBEAT_INTERVAL_S = 1.0
GPU_WORKER = "gpu-0@node-a"
CPU_WORKER = "cpu-1@node-b"
GPU_UUID = "GPU-6f1c2a7e-0d4b-4c1e-9a51-3b2f0c9d8e71"

# (name, device_type, total_calls, total_time_ms, avg_memory_mb): ordered by
# calls, these come out in a different order than by total time (the default).
GPU_KERNELS = [
    ("aten::conv2d", "cuda", 120, 30.0, 12.5),
    ("aten::relu", "cuda", 480, 2.0, 0.0),
    ("aten::linear", "cuda", 60, 9.0, 4.0),
]
CPU_KERNELS = [
    ("aten::add_", "cpu", 240, 1.0, 0.1),
    ("aten::max_pool2d", "cpu", 30, 4.5, 0.5),
]
ALL_KERNELS = GPU_KERNELS + CPU_KERNELS
BY_CALLS = [k[0] for k in sorted(ALL_KERNELS, key=lambda k: -k[2])]
BY_TOTAL_TIME = [k[0] for k in sorted(ALL_KERNELS, key=lambda k: -k[3])]


def _hist(values: list[float], bounds: list[float]) -> dict[str, Any]:
    """A cumulative ``[le, count]`` histogram as the workers publish it."""
    buckets = [[b, sum(1 for v in values if v <= b)] for b in bounds]
    return {"buckets": buckets, "sum": round(sum(values), 3), "count": len(values)}


MS_BOUNDS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000]


def _model(
    model_id: str, device: str, frames: int, latency_ms: float, kernels: list[tuple]
) -> dict[str, Any]:
    # a latency spread around latency_ms, scaled to the frame count
    spread = [latency_ms * f for f in (0.6, 0.8, 1.0, 1.0, 1.2, 2.5)]
    totals = [spread[i % len(spread)] for i in range(frames)]
    batches = max(1, frames // 4)
    return {
        "model_id": model_id,
        "state": "ready",
        "reason": None,
        "error_rate": 0.0,
        "window_frames": min(frames, 50),
        "inferences": frames,
        "errors": 0,
        "since": time.time() - 60,
        "version": "1.0.0",
        "device": device,
        "queue": keys.queue_name(model_id),
        "estimated_mb": 120.0,
        "measured_mb": 98.5 if device.startswith("cuda") else None,
        "max_batch_size": 16,
        "batch_cap": {"limit": 16, "current": 16, "ooms": 0, "last_oom_at": None},
        "in_flight": 1,
        "stats": {
            "frames": frames,
            "ok": frames,
            "errors": 0,
            "expired": 0,
            "batches": batches,
            "oom_splits": 0,
            "batch_sizes": {"4": batches},
            "batch_size_hist": _hist([4.0] * batches, [1, 2, 4, 8, 16]),
            "frame_size_bytes": _hist([30_000.0] * frames, [8192, 32768, 131072]),
            "timings_ms": {
                "queue": _hist([t * 0.1 for t in totals], MS_BOUNDS),
                "inference": _hist([t * 0.7 for t in totals], MS_BOUNDS),
                "total": _hist(totals, MS_BOUNDS),
            },
        },
        "profiler": {
            "profiled_batches": 2,
            "skipped_batches": 0,
            "pending_on_demand": 0,
            "every_n": 0,
            "overhead_ms_avg": 2.2,
            "fold_ms_avg": 2.1,
        },
        "kernels": [
            {
                "name": name,
                "device_type": device_type,
                "total_calls": calls,
                "avg_time_ms": round(total / calls, 6),
                "total_time_ms": total,
                "avg_memory_mb": mem,
                "last_execution": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for name, device_type, calls, total, mem in kernels
        ],
    }


class FakeCluster:
    """Rewrites two workers' heartbeats (and keeps frames queued) every half second."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.started = time.time()
        self.gpu_memory_percent = 40.0  # raise to 99 to trip the critical memory alert
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-heartbeats", daemon=True)
        self.errors: list[BaseException] = []

    def heartbeat(self, name: str, host: str, device: str, now: float) -> dict[str, Any]:
        elapsed = now - self.started
        gpu = device.startswith("cuda")
        model_id, rate, latency, kernels = (
            ("resnet18", 95.0, 11.0, GPU_KERNELS)
            if gpu
            else ("shape_detector", 9.5, 3.0, CPU_KERNELS)
        )
        frames = 200 + int(rate * elapsed)
        model = _model(model_id, device, frames, latency, kernels)
        reading = {
            "index": 0,
            "uuid": GPU_UUID,
            "name": "NVIDIA H100 80GB HBM3",
            "utilization_percent": 55.0 + 20.0 * ((int(elapsed) % 4) / 3),
            "memory_used_mb": round(81559.0 * self.gpu_memory_percent / 100.0, 1),
            "memory_total_mb": 81559.0,
            "temperature_c": 61.0,
            "power_w": 312.5,
            "sm_clock_mhz": 1980.0,
            "mem_clock_mhz": 2619.0,
            "process_memory_mb": 2048.0,
        }
        return {
            "worker": name,
            "hostname": host,
            "pid": 4242 if gpu else 4343,
            "runtime_id": "framepool-e2e00001",
            "state": "ready",
            "device": device,
            "gpu": {
                "index": 0,
                "uuid": GPU_UUID,
                "name": reading["name"],
                "total_memory_mb": 81559.0,
            }
            if gpu
            else None,
            "gpus": [0] if gpu else [],
            "started_at": self.started,
            "updated_at": now,
            "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
            "nvml": {"available": True, "reason": None, "gpus": [reading]}
            if gpu
            else {"available": False, "reason": "NVML library not found", "gpus": []},
            "gpu_manager": {
                "status": "ok" if gpu else "disabled",
                "device_count": 1 if gpu else 0,
                "devices": [],
                "allocations": [],
                "total_allocated_mb": 98.5 if gpu else 0.0,
            },
            "models": {model_id: model},
            "totals": {"frames": frames, "ok": frames, "errors": 0, "expired": 0, "batches": 1},
        }

    def _queue_frames(self, now: float) -> None:
        queue = keys.queue_name("shape_detector")
        if self.client.llen(queue) >= 3:
            return
        for _ in range(3):
            meta = {"camera_id": "cam-1", "enqueued_at": now, "deadline_at": now + 5.0}
            body = msgpack.packb([[b"\xff\xd8fake-jpeg", meta], {}, {}], use_bin_type=True)
            envelope = {
                "body": base64.b64encode(body).decode(),
                "content-encoding": "binary",
                "content-type": "application/x-msgpack",
                "headers": {"task": keys.INFER_TASK, "id": str(uuid.uuid4())},
                "properties": {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
            }
            self.client.lpush(queue, json.dumps(envelope))

    def write(self) -> None:
        now = time.time()
        ttl = keys.heartbeat_ttl(HEARTBEAT_INTERVAL_S)
        pipe = self.client.pipeline()
        for name, host, device in ((GPU_WORKER, "node-a", "cuda:0"), (CPU_WORKER, "node-b", "cpu")):
            beat = self.heartbeat(name, host, device, now)
            pipe.set(keys.worker_heartbeat(name), json.dumps(beat), ex=ttl)
            pipe.sadd(keys.WORKERS, name)
        pipe.sadd(keys.SERVED_MODELS, "resnet18", "shape_detector")
        pipe.execute()
        self._queue_frames(now)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.write()
            except BaseException as exc:  # surfaced by the test, never silently lost
                self.errors.append(exc)
                return

    def start(self) -> FakeCluster:
        self.write()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()
