"""Fake worker heartbeats in the shape workers publish (workers/snapshot.py).

Used where a test needs GPU readings on a machine without a GPU (the "fake
NVML" of the monitor's tests) or hundreds of workers at once.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from framepool import keys


def hist(bounds: list[float], values: list[float]) -> dict[str, Any]:
    buckets = [[b, sum(1 for v in values if v <= b)] for b in bounds]
    return {"buckets": buckets, "sum": float(sum(values)), "count": len(values)}


MS_BOUNDS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]


def model_entry(
    model_id: str, *, frames: int = 100, errors: int = 0, state: str = "ready", kernels: int = 3
) -> dict[str, Any]:
    totals = [5.0 + (i % 20) for i in range(frames)]
    return {
        "model_id": model_id,
        "state": state,
        "reason": None,
        "error_rate": errors / frames if frames else 0.0,
        "window_frames": min(frames, 50),
        "inferences": frames,
        "errors": errors,
        "since": time.time() - 60,
        "version": "1.0.0",
        "device": "cuda:0",
        "queue": keys.queue_name(model_id),
        "estimated_mb": 100.0,
        "measured_mb": 180.0,
        "max_batch_size": 16,
        "batch_cap": {"limit": 16, "current": 16, "ooms": 0, "last_oom_at": None},
        "in_flight": 2,
        "stats": {
            "frames": frames,
            "ok": frames - errors,
            "errors": errors,
            "expired": 0,
            "batches": frames // 4,
            "oom_splits": 0,
            "batch_sizes": {"4": frames // 4},
            "batch_size_hist": hist([1, 2, 4, 8, 16], [4.0] * (frames // 4)),
            "frame_size_bytes": hist([4096 * 2**i for i in range(13)], [50_000.0] * frames),
            "timings_ms": {
                "total": hist(MS_BOUNDS, totals),
                "decode": hist(MS_BOUNDS, [1.5] * frames),
                "inference": hist(MS_BOUNDS, [3.0] * frames),
                "batch_wait": hist(MS_BOUNDS, [0.4] * frames),
            },
        },
        "profiler": {"profiled_batches": 1, "every_n": 0},
        "kernels": [
            {
                "name": f"sm90_kernel_{model_id}_{i}",
                "device_type": "cuda",
                "total_calls": 10 * (i + 1),
                "avg_time_ms": 0.1 * (kernels - i),
                "total_time_ms": 0.1 * (kernels - i) * 10 * (i + 1),
                "avg_memory_mb": 4.0,
                "last_execution": "2026-11-22T18:00:00Z",
            }
            for i in range(kernels)
        ],
    }


def gpu_heartbeat(
    name: str,
    host: str = "hostA",
    *,
    gpu_index: int = 0,
    uuid: str | None = None,
    util: float = 50.0,
    mem_used_mb: float = 20_000.0,
    mem_total_mb: float = 81_559.0,
    temperature: float = 55.0,
    models: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    uuid = uuid or f"GPU-{host}-{gpu_index:04d}"
    reading = {
        "index": gpu_index,
        "uuid": uuid,
        "name": "NVIDIA H100 80GB HBM3",
        "utilization_percent": util,
        "memory_used_mb": mem_used_mb,
        "memory_total_mb": mem_total_mb,
        "temperature_c": temperature,
        "power_w": 300.0,
        "sm_clock_mhz": 1980.0,
        "mem_clock_mhz": 2619.0,
        "process_memory_mb": 2000.0,
    }
    models = models if models is not None else {"resnet50": model_entry("resnet50")}
    now = time.time()
    return {
        "worker": name,
        "hostname": host,
        "pid": 4242,
        "runtime_id": "framepool-test",
        "state": "ready",
        "device": "cuda:0",
        "gpu": {"index": 0, "uuid": uuid, "name": reading["name"], "total_memory_mb": mem_total_mb},
        "gpus": [],
        "started_at": now - 100,
        "updated_at": now,
        "heartbeat_interval_s": 1.0,
        "nvml": {"available": True, "reason": None, "gpus": [reading]},
        "gpu_manager": {
            "status": "available",
            "device_count": 1,
            "devices": [],
            "allocations": [
                {
                    "model_id": m,
                    "version": "1.0.0",
                    "device": "cuda:0",
                    "estimated_mb": 100.0,
                    "measured_mb": 180.0,
                }
                for m in models
            ],
            "total_allocated_mb": 180.0 * len(models),
        },
        "models": models,
        "totals": {"frames": 100, "ok": 100, "errors": 0, "expired": 0, "batches": 25},
    }


def publish(client: redis.Redis, heartbeat: dict[str, Any], ttl: int = 30) -> None:
    name = heartbeat["worker"]
    heartbeat["updated_at"] = time.time()
    client.set(keys.worker_heartbeat(name), json.dumps(heartbeat), ex=ttl)
    client.sadd(keys.WORKERS, name)
