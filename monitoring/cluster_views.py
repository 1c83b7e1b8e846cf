"""The cluster snapshot's dataclasses: workers, queues, GPUs, models at one instant.

:class:`ClusterSnapshot` is what :class:`monitoring.cluster.ClusterReader` returns
and what the Prometheus collector, the alert engine, the REST API and the
WebSocket stream all read. Import these names from ``monitoring.cluster``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass
class WorkerView:
    """One worker with a live heartbeat (``raw`` is the heartbeat JSON as sent)."""

    name: str
    hostname: str
    pid: int
    state: str
    device: str
    gpu: dict[str, Any] | None
    nvml: dict[str, Any]
    models: dict[str, dict[str, Any]]
    totals: dict[str, Any]
    updated_at: float
    age_s: float
    raw: dict[str, Any]
    #: the MPS pipe directory the worker's CUDA work goes through (``workers/mps.py``)
    mps: str | None = None
    #: What is derived from this heartbeat once (e.g. compact histograms), shared by
    #: the copies the reader makes of an unchanged heartbeat's view.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``raw`` (its content is in the other fields) and ``memo``."""
        d = asdict(replace(self, raw={}, memo={}))
        del d["raw"], d["memo"]
        return d


@dataclass
class QueueView:
    model_id: str
    queue: str
    depth: int
    oldest_age_s: float | None
    dropped: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeviceView:
    """One physical GPU: the latest NVML reading among the workers that use it.

    ``key`` is ``"<hostname>/<uuid>"`` (``"<hostname>/<index>"`` when the UUID is
    unknown), unique across hosts and stable across worker restarts.
    ``allocated_mb`` (an addition to the spec) sums framepool's model allocations
    on this GPU over its workers (measured memory when known, else the estimate).
    """

    key: str
    hostname: str
    index: int
    uuid: str | None
    name: str | None
    utilization_percent: float | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    temperature_c: float | None
    power_w: float | None
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    workers: list[str]
    allocated_mb: float = 0.0
    has_reading: bool = False  # an NVML reading (not only the worker's CUDA identity)

    @property
    def memory_percent(self) -> float | None:
        if self.memory_used_mb is None or not self.memory_total_mb:
            return None
        return round(100.0 * self.memory_used_mb / self.memory_total_mb, 2)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "memory_percent": self.memory_percent}


#: ModelView's histograms, which a ``histograms`` callable may fill on first use.
HISTOGRAM_FIELDS = ("timings_ms", "batch_size_hist", "frame_size_bytes")


@dataclass
class ModelView:
    """One model aggregated over live workers; ``state`` is the best of theirs.

    With ``histograms`` given, the three histogram fields are left unset and
    filled from ``histograms()`` the first time one is read: summing 32 workers'
    histograms is most of a snapshot's cost, and a poll reads none of them unless
    a scrape, a dashboard or an API call does.
    """

    model_id: str
    versions: list[str]
    states: dict[str, str]  # worker -> state
    state: str  # ready > degraded > unhealthy > loading > failed; "absent" when no worker
    frames: int
    ok: int
    errors: int
    expired: int
    batches: int
    in_flight: int
    timings_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size_hist: dict[str, Any] = field(default_factory=dict)
    frame_size_bytes: dict[str, Any] = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)
    histograms: Callable[[], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.histograms is not None:
            for name in HISTOGRAM_FIELDS:
                delattr(self, name)  # __getattr__ fills them on first use

    def __getattr__(self, name: str) -> Any:
        build = self.__dict__.get("histograms")
        if name not in HISTOGRAM_FIELDS or build is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.__dict__.update(build())
        return self.__dict__[name]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(
            replace(self, **{n: getattr(self, n) for n in HISTOGRAM_FIELDS}, histograms=None)
        )
        del d["histograms"]
        return d


@dataclass
class ClusterSnapshot:
    taken_at: float
    workers: list[WorkerView]
    gone: list[str]  # names in keys.WORKERS whose heartbeat key has expired
    queues: dict[str, QueueView]
    devices: list[DeviceView]
    models: dict[str, ModelView]
    gpu_available: bool  # any device with an NVML reading
    #: Per model, the histograms of worker incarnations no longer live (``Hist`` form:
    #: ``timings_ms``, ``batch_size_hist``, ``frame_size_bytes``), kept by the reader so
    #: that per-model sums in /metrics never drop (:mod:`monitoring.retired`).
    retired: dict[str, dict[str, Any]] = field(default_factory=dict)
    _kernel_cache: dict[tuple[str | None, str | None], list[dict[str, Any]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def empty(cls, taken_at: float = 0.0) -> ClusterSnapshot:
        return cls(taken_at, [], [], {}, [], {}, False)

    def worker(self, name: str) -> WorkerView | None:
        return next((w for w in self.workers if w.name == name), None)

    def kernels(self, worker: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Kernel rows merged by ``(name, device_type)`` over the matching workers and models,
        the most total time first: name, device_type, total_calls, total_time_ms,
        avg_time_ms, avg_memory_mb (call-weighted), last_execution (latest), workers, models."""
        cached = self._kernel_cache.get((worker, model))
        if cached is None:
            cached = _merge_kernels(self.workers, worker, model)
            self._kernel_cache[(worker, model)] = cached
        return [dict(r, workers=list(r["workers"]), models=list(r["models"])) for r in cached]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: workers without their raw heartbeat, devices with memory_percent."""
        return {
            "taken_at": self.taken_at,
            "gpu_available": self.gpu_available,
            "workers": [w.to_dict() for w in self.workers],
            "gone": list(self.gone),
            "queues": {m: q.to_dict() for m, q in self.queues.items()},
            "devices": [d.to_dict() for d in self.devices],
            "models": {m: v.to_dict() for m, v in self.models.items()},
        }


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _merge_kernels(
    workers: list[WorkerView], worker: str | None, model: str | None
) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for w in workers:
        if worker is not None and w.name != worker:
            continue
        for model_id, entry in w.models.items():
            if model is not None and model_id != model:
                continue
            kernels = entry.get("kernels")
            for k in kernels if isinstance(kernels, list) else []:
                if not isinstance(k, dict) or not isinstance(k.get("name"), str):
                    continue
                calls = _num(k.get("total_calls"))
                if calls <= 0:
                    continue
                key = (k["name"], str(k.get("device_type") or ""))
                row = rows.setdefault(
                    key,
                    {"calls": 0.0, "time": 0.0, "mem": 0.0, "last": "", "w": {}, "m": {}},
                )
                row["calls"] += calls
                total = k.get("total_time_ms")
                row["time"] += _num(
                    total if total is not None else _num(k.get("avg_time_ms")) * calls
                )
                row["mem"] += _num(k.get("avg_memory_mb")) * calls
                last = k.get("last_execution")
                if isinstance(last, str) and last > row["last"]:
                    row["last"] = last
                row["w"][w.name] = None
                row["m"][model_id] = None
    out = [
        {
            "name": name,
            "device_type": device_type,
            "total_calls": int(r["calls"]),
            "total_time_ms": round(r["time"], 6),
            "avg_time_ms": round(r["time"] / r["calls"], 6),
            "avg_memory_mb": round(r["mem"] / r["calls"], 6),
            "last_execution": r["last"] or None,
            "workers": list(r["w"]),
            "models": list(r["m"]),
        }
        for (name, device_type), r in rows.items()
    ]
    out.sort(key=lambda d: d["total_time_ms"], reverse=True)
    return out
