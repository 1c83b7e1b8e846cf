"""What the gateway knows about the cluster: live worker heartbeats, read from Redis.

A model is *served* when a live worker (its heartbeat key has not expired, and
it is not stopping) holds it in state ``ready`` or ``degraded``: that is what
``/capabilities`` and ``/health`` report, rather than what could be loaded. A
read is reused for :data:`CLUSTER_CACHE_S`, so probes that poll ``/health``
cost Redis little.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from framepool import keys
from framepool.manifest import ModelManifest
from framepool.settings import Settings

CLUSTER_CACHE_S = 1.0
#: Model states a worker takes frames in; the best state of a model wins.
SERVING = ("ready", "degraded")
STATE_ORDER = ("ready", "degraded", "unhealthy", "loading", "failed")
#: Worker states whose models no longer take frames.
_LEAVING = ("stopping", "device_lost")


@dataclass(frozen=True, slots=True)
class WorkerModel:
    worker: str
    state: str
    version: str | None
    device: str | None
    inferences: int
    errors: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "state": self.state,
            "version": self.version,
            "device": self.device,
        }


@dataclass(slots=True)
class ClusterView:
    taken_at: float
    workers: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, list[WorkerModel]] = field(default_factory=dict)

    def state(self, model_id: str) -> str:
        """The best state of ``model_id`` over live workers; ``absent`` when none holds it."""
        states = {m.state for m in self.models.get(model_id, [])}
        return next((s for s in STATE_ORDER if s in states), "absent" if not states else "unknown")

    def served(self) -> list[str]:
        return sorted(m for m in self.models if self.state(m) in SERVING)


def read_cluster(client: redis.Redis, now: float | None = None) -> ClusterView:
    """Every live worker's heartbeat (two round trips); raises ``redis.RedisError``."""
    view = ClusterView(taken_at=time.time() if now is None else now)
    names = sorted(
        n.decode() if isinstance(n, bytes) else str(n) for n in client.smembers(keys.WORKERS)
    )
    if not names:
        return view
    values = client.mget([keys.worker_heartbeat(n) for n in names])
    for name, raw in zip(names, values, strict=True):
        if not raw:
            continue  # expired: the worker is gone
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(beat, dict):
            continue
        state = str(beat.get("state", "unknown"))
        gpu = beat.get("gpu") if isinstance(beat.get("gpu"), dict) else None
        view.workers.append(
            {
                "name": name,
                "hostname": beat.get("hostname"),
                "state": state,
                "device": beat.get("device"),
                "gpu": gpu,
                "age_s": round(max(0.0, view.taken_at - float(beat.get("updated_at") or 0)), 2),
            }
        )
        if state in _LEAVING:
            continue
        models = beat.get("models")
        for model_id, entry in models.items() if isinstance(models, dict) else []:
            if not isinstance(entry, dict):
                continue
            view.models.setdefault(model_id, []).append(
                WorkerModel(
                    worker=name,
                    state=str(entry.get("state", "unknown")),
                    version=entry.get("version"),
                    device=entry.get("device"),
                    inferences=int(entry.get("inferences") or 0),
                    errors=int(entry.get("errors") or 0),
                )
            )
    return view


class ClusterCache:
    """:func:`read_cluster`, reused for ``ttl`` seconds (thread-safe)."""

    def __init__(
        self,
        client: redis.Redis,
        ttl: float = CLUSTER_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.ttl, self.clock = client, ttl, clock
        self._view: ClusterView | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def read(self) -> ClusterView:
        with self._lock:
            now = self.clock()
            if self._view is None or now - self._at >= self.ttl:
                self._view = read_cluster(self.client)
                self._at = now
            return self._view


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def capabilities(
    view: ClusterView, manifests: dict[str, ModelManifest], settings: Settings
) -> dict[str, Any]:
    """``GET /capabilities``: the served models, with their manifests and workers."""
    models = []
    for model_id in sorted(set(manifests) | set(view.models)):
        m = manifests.get(model_id)
        held = view.models.get(model_id, [])
        state = view.state(model_id)
        models.append(
            {
                "model_id": model_id,
                "served": state in SERVING,
                "state": state,
                "version": m.version if m else next((w.version for w in held if w.version), None),
                "versions": sorted({w.version for w in held if w.version}),
                "workers": [w.to_dict() for w in held],
                "devices": sorted({w.device for w in held if w.device}),
                "input_size": list(m.input_size) if m else None,
                "labels": m.labels if m else [],
                "max_batch_size": m.max_batch_size if m else None,
                "memory_mb": m.memory_mb if m else None,
                "description": m.description if m else "",
                "queue": keys.queue_name(model_id),
                "in_manifests": m is not None,
            }
        )
    return {
        "runtime_id": settings.runtime_id,
        "timestamp": iso(view.taken_at),
        "served_models": view.served(),
        "models": models,
        "workers_up": len(view.workers),
        "frames": {
            "formats": ["jpeg", "png"],
            "max_frame_bytes": settings.max_frame_bytes,
            "max_frame_pixels": settings.max_frame_pixels,
        },
        "auth_required": bool(settings.api_token),
    }


def health(view: ClusterView, settings: Settings, verbose: bool) -> dict[str, Any]:
    """``GET /health`` with Redis reachable: the reference's fields over live workers.

    ``healthy`` when a model is served and none is degraded or failing,
    ``degraded`` otherwise (frames are still taken and wait in their queues).
    """
    states = {m: view.state(m) for m in view.models}
    ready = sum(1 for s in states.values() if s in SERVING)
    degraded = sum(1 for s in states.values() if s == "degraded")
    unhealthy = sum(1 for s in states.values() if s in ("unhealthy", "failed"))
    healthy = ready > 0 and not degraded and not unhealthy
    body: dict[str, Any] = {
        "status": "healthy" if healthy else "degraded",
        "runtime_id": settings.runtime_id,
        "redis": "ok",
        "models_loaded": sum(1 for s in states.values() if s in (*SERVING, "unhealthy")),
        "models_healthy": sum(1 for s in states.values() if s == "ready"),
        "models_degraded": degraded,
        "models_unhealthy": unhealthy,
        "models_ready": ready,
        "workers_up": len(view.workers),
    }
    if not verbose:
        return body
    gpus = {
        (w["hostname"], w["gpu"].get("uuid") or w["gpu"].get("index")): {
            "device_id": w["gpu"].get("index"),
            "hostname": w["hostname"],
            "uuid": w["gpu"].get("uuid"),
            "name": w["gpu"].get("name"),
            "total_memory_mb": w["gpu"].get("total_memory_mb"),
        }
        for w in view.workers
        if w["gpu"]
    }
    body["gpu_available"] = bool(gpus)
    body["gpu_device_count"] = len(gpus)
    body["gpu_devices"] = list(gpus.values())
    body["models"] = [
        {
            "model_id": model_id,
            "version": next((w.version for w in held if w.version), None),
            "state": states[model_id],
            "health": "healthy" if states[model_id] == "ready" else states[model_id],
            "inference_count": sum(w.inferences for w in held),
            "error_count": sum(w.errors for w in held),
            "workers": [w.to_dict() for w in held],
        }
        for model_id, held in sorted(view.models.items())
    ]
    body["workers"] = view.workers
    return body
