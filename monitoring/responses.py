"""The monitor's JSON answers, built from a ClusterSnapshot (pure functions).

Field names follow the reference documents: ``/health`` the first one's
(``status``, ``runtime_id``, ``models_loaded`` ...), the GPU API the second
one's (``gpu_utilization``, ``memory.used_mb``, ``total_calls`` ...), extended
with per-device and per-worker detail. Without any GPU every answer says
``gpu_available: false`` and carries nulls, never an error.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from monitoring.cluster import ClusterSnapshot, ModelView
from monitoring.rates import RateTracker

SERVING = ("ready", "degraded")
LOADED = ("ready", "degraded", "unhealthy")


def iso(ts: float | None = None) -> str:
    t = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _gpu_totals(snap: ClusterSnapshot) -> tuple[float | None, float | None, float | None]:
    """Mean utilization, summed used and total memory over devices with readings."""
    utils = [d.utilization_percent for d in snap.devices if d.utilization_percent is not None]
    used = [d.memory_used_mb for d in snap.devices if d.memory_used_mb is not None]
    total = [d.memory_total_mb for d in snap.devices if d.memory_total_mb is not None]
    return (
        round(sum(utils) / len(utils), 2) if utils else None,
        round(sum(used), 1) if used else None,
        round(sum(total), 1) if total else None,
    )


def _model_brief(entry: dict[str, Any]) -> dict[str, Any]:
    """A heartbeat's model entry without its bulky parts (kernels, histograms)."""
    out = {k: v for k, v in entry.items() if k not in ("kernels", "stats")}
    stats = entry.get("stats") or {}
    out["stats"] = {k: v for k, v in stats.items() if not isinstance(v, dict) or k == "batch_sizes"}
    return out


def workers_list(snap: ClusterSnapshot) -> dict[str, Any]:
    workers = [
        {
            "name": w.name,
            "hostname": w.hostname,
            "pid": w.pid,
            "state": w.state,
            "device": w.device,
            "gpu": w.gpu,
            "mps": w.mps,
            "age_s": round(w.age_s, 2),
            "nvml": w.nvml,
            "gpu_manager": w.raw.get("gpu_manager"),
            "totals": w.totals,
            "models": {m: _model_brief(e) for m, e in w.models.items()},
        }
        for w in snap.workers
    ]
    return {"timestamp": iso(snap.taken_at), "workers": workers, "gone": list(snap.gone)}


def gpu_status(snap: ClusterSnapshot, uptime_s: float) -> dict[str, Any]:
    util, used, total = _gpu_totals(snap)
    percent = round(used / total * 100.0, 2) if used is not None and total else None
    per_worker = []
    for w in snap.workers:
        mine = (w.nvml or {}).get("gpus", [])
        per_worker.append(
            {
                "worker": w.name,
                "hostname": w.hostname,
                "device": w.device,
                "gpu_uuid": (w.gpu or {}).get("uuid"),
                "mps": w.mps is not None,
                "process_memory_mb": sum(g.get("process_memory_mb") or 0.0 for g in mine) or None,
                "nvml_available": bool((w.nvml or {}).get("available")),
                "models": {m: e.get("device") for m, e in w.models.items()},
            }
        )
    return {
        "timestamp": iso(snap.taken_at),
        "gpu_available": snap.gpu_available,
        "gpu_utilization": util,
        "memory": {"used_mb": used, "total_mb": total, "percent": percent},
        "uptime_seconds": int(uptime_s),
        "device_count": len(snap.devices),
        "devices": [d.to_dict() for d in snap.devices],
        "workers": per_worker,
    }


def _model_health(state: str) -> str:
    return {"ready": "healthy", "degraded": "degraded"}.get(state, "unhealthy")


def health(snap: ClusterSnapshot, runtime_id: str, verbose: bool) -> tuple[dict[str, Any], int]:
    """The reference's health answer over every worker, and its HTTP status (503: none serving)."""
    models = [m for m in snap.models.values() if m.state != "absent"]
    ready = sum(1 for m in models if m.state in SERVING)
    degraded = sum(1 for m in models if m.state == "degraded")
    unhealthy = sum(1 for m in models if m.state in ("unhealthy", "failed"))
    if ready == 0:
        status = "unhealthy"
    elif degraded or unhealthy or snap.gone:
        status = "degraded"
    else:
        status = "healthy"
    body: dict[str, Any] = {
        "status": status,
        "runtime_id": runtime_id,
        "models_loaded": sum(1 for m in models if m.state in LOADED),
        "models_healthy": sum(1 for m in models if m.state == "ready"),
        "models_degraded": degraded,
        "models_unhealthy": unhealthy,
        "models_ready": ready,
        "workers_up": len(snap.workers),
        "workers_gone": len(snap.gone),
    }
    if not verbose:
        return body, 503 if status == "unhealthy" else 200
    body["gpu_available"] = snap.gpu_available
    body["gpu_device_count"] = len(snap.devices)
    body["gpu_devices"] = [
        {
            "device_id": d.index,
            "hostname": d.hostname,
            "uuid": d.uuid,
            "name": d.name,
            "total_memory_mb": d.memory_total_mb,
            "used_memory_mb": d.memory_used_mb,
            "available_memory_mb": (
                round(d.memory_total_mb - d.memory_used_mb, 1)
                if d.memory_total_mb is not None and d.memory_used_mb is not None
                else None
            ),
            "utilization_percent": d.utilization_percent,
            "temperature_c": d.temperature_c,
        }
        for d in snap.devices
    ]
    body["models"] = [
        {
            "model_id": m.model_id,
            "version": m.versions[0] if m.versions else None,
            "versions": m.versions,
            "state": m.state,
            "health": _model_health(m.state),
            "inference_count": m.frames,
            "error_count": m.errors,
            "workers": m.states,
        }
        for m in models
    ]
    body["workers"] = [
        {"name": w.name, "hostname": w.hostname, "state": w.state, "age_s": round(w.age_s, 2)}
        for w in snap.workers
    ]
    return body, 503 if status == "unhealthy" else 200


def model_rates(m: ModelView, rates: RateTracker) -> dict[str, Any]:
    """State and counters of one model, with its throughput and recent latency."""
    return {
        "state": m.state,
        "frames": m.frames,
        "errors": m.errors,
        "expired": m.expired,
        "in_flight": m.in_flight,
        **rates.model(m.model_id),
    }


def report(snap: ClusterSnapshot, uptime_s: float, active: list[dict[str, Any]]) -> dict[str, Any]:
    kernels = snap.kernels()
    total_calls = sum(k["total_calls"] for k in kernels)
    gpu_time = sum(k["total_time_ms"] for k in kernels if k.get("device_type") == "cuda")
    all_time = sum(k["total_time_ms"] for k in kernels)
    allocated = sum(d.allocated_mb for d in snap.devices)
    _, used, _ = _gpu_totals(snap)
    efficiency = (
        f"{allocated / used * 100:.1f}% of used GPU memory is framepool's models"
        if used
        else "n/a (no GPU reading)"
    )
    return {
        "timestamp": iso(snap.taken_at),
        "gpu_status": gpu_status(snap, uptime_s),
        "top_kernels": sorted(kernels, key=lambda k: -k["total_time_ms"])[:10],
        "active_alerts": active,
        "summary": {
            "total_kernel_calls": total_calls,
            "total_gpu_time_ms": round(gpu_time, 3),
            "total_profiled_time_ms": round(all_time, 3),
            "avg_kernel_time_ms": round(all_time / total_calls, 4) if total_calls else None,
            "memory_efficiency": efficiency,
            "workers": len(snap.workers),
            "models": len([m for m in snap.models.values() if m.state != "absent"]),
        },
    }


def stream_message(
    snap: ClusterSnapshot,
    rates: RateTracker,
    changed_alerts: list[dict[str, Any]],
    active: list[dict[str, Any]],
) -> dict[str, Any]:
    """The 1 Hz ``gpu_metrics`` message: the reference's fields plus devices, queues, alerts."""
    util, used, total = _gpu_totals(snap)
    kernels = sorted(snap.kernels(), key=lambda k: -k["total_time_ms"])
    recent = sorted(kernels, key=lambda k: k.get("last_execution") or "", reverse=True)[:5]
    return {
        "type": "gpu_metrics",
        "timestamp": iso(snap.taken_at),
        "gpu_available": snap.gpu_available,
        "gpu_utilization": util,
        "memory_used_mb": used,
        "memory_total_mb": total,
        "recent_kernels": [{"name": k["name"], "duration_ms": k["avg_time_ms"]} for k in recent],
        "devices": [d.to_dict() for d in snap.devices],
        "workers": [
            {
                "name": w.name,
                "hostname": w.hostname,
                "state": w.state,
                "device": w.device,
                "age_s": round(w.age_s, 2),
                "models": {m: e.get("state") for m, e in w.models.items()},
            }
            for w in snap.workers
        ],
        "models": {mid: model_rates(m, rates) for mid, m in snap.models.items()},
        "queues": {
            mid: {"depth": q.depth, "oldest_age_s": q.oldest_age_s, "dropped": q.dropped}
            for mid, q in snap.queues.items()
        },
        "kernels": kernels[:100],
        "alerts": changed_alerts,
        "active_alerts": active,
        "active_alert_count": len(active),
    }
