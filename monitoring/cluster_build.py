"""From heartbeat JSON to views: parse one worker, merge GPUs per device, aggregate models.

Pure functions (no Redis): :func:`parse_worker` accepts whatever is stored under a
heartbeat key and never raises (unparseable JSON gives a worker in state
``invalid``); :func:`build_devices` groups NVML readings by physical GPU
(``"<hostname>/<uuid or index>"``) keeping the newest; :func:`build_models` sums
counters over the workers that serve each model (their histograms when first read,
:mod:`monitoring.model_hists`). What is read of a heartbeat for these is read once
per heartbeat and kept in its view's ``memo``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, MutableMapping
from typing import Any

from monitoring.cluster_views import DeviceView, ModelView, WorkerView
from monitoring.model_hists import merged

#: Best first: a model's cluster state is the best state among its workers.
STATE_ORDER = ("ready", "degraded", "unhealthy", "loading", "failed")
_RANK = {s: len(STATE_ORDER) - i for i, s in enumerate(STATE_ORDER)}
COUNTERS = ("frames", "ok", "errors", "expired", "batches")


def device_key(hostname: str, uuid: str | None, index: int | None) -> str:
    """``"<hostname>/<uuid>"``, or ``"<hostname>/<index>"`` when the UUID is unknown."""
    return f"{hostname}/{uuid if uuid else index}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int:
    number = _float(value)
    return int(number) if number is not None else 0


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def parse_worker(name: str, value: Any, now: float) -> WorkerView:
    """A view of the heartbeat stored for worker ``name`` (bytes, str or dict)."""
    raw: Any = value
    try:
        if isinstance(value, bytes | str):
            raw = json.loads(value)
    except (ValueError, RecursionError):
        raw = None
    if not isinstance(raw, dict):
        host = name.rpartition("@")[2] if "@" in name else ""
        return WorkerView(name, host, 0, "invalid", "", None, {}, {}, {}, now, 0.0, {})
    updated = _float(raw.get("updated_at"))
    updated = now if updated is None else updated
    models = {str(k): v for k, v in _dict(raw.get("models")).items() if isinstance(v, dict)}
    gpu = raw.get("gpu")
    return WorkerView(
        name=name,
        hostname=_str(raw.get("hostname"), name.rpartition("@")[2] if "@" in name else ""),
        pid=_int(raw.get("pid")),
        state=_str(raw.get("state"), "unknown"),
        device=_str(raw.get("device")),
        gpu=gpu if isinstance(gpu, dict) else None,
        nvml=_dict(raw.get("nvml")),
        models=models,
        totals=_dict(raw.get("totals")),
        updated_at=updated,
        age_s=max(0.0, now - updated),
        raw=raw,
        mps=raw["mps"] if isinstance(raw.get("mps"), str) and raw["mps"] else None,
    )


def worker_gpus(w: WorkerView) -> list[dict[str, Any]]:
    """The CUDA identities a worker uses (``gpus``, else ``gpu``), as dicts."""
    gpus = w.raw.get("gpus")
    found = [g for g in gpus if isinstance(g, dict)] if isinstance(gpus, list) else []
    if not found and w.gpu is not None:
        found = [w.gpu]
    return found


def readings(w: WorkerView) -> list[dict[str, Any]]:
    """The worker's NVML readings (dicts only)."""
    gpus = w.nvml.get("gpus")
    return [r for r in gpus if isinstance(r, dict)] if isinstance(gpus, list) else []


def reading_key(w: WorkerView, r: dict[str, Any]) -> str:
    return device_key(w.hostname, _str(r.get("uuid")) or None, _int(r.get("index")))


_READ_FIELDS = (
    "utilization_percent",
    "memory_used_mb",
    "memory_total_mb",
    "temperature_c",
    "power_w",
    "sm_clock_mhz",
    "mem_clock_mhz",
)


def _allocations_by_key(w: WorkerView, ident: dict[int, str]) -> dict[str, float]:
    """MB of framepool models this worker placed on each of its GPUs (by device key)."""
    out: dict[str, float] = {}
    allocs = _dict(w.raw.get("gpu_manager")).get("allocations")
    for a in allocs if isinstance(allocs, list) else []:
        device = _str(a.get("device")) if isinstance(a, dict) else ""
        if not device.startswith("cuda"):
            continue
        index = device.partition(":")[2]
        key = ident.get(int(index) if index.isdigit() else 0)
        if key is None and len(ident) == 1:
            key = next(iter(ident.values()))
        mb = _float(a.get("measured_mb"))
        mb = mb if mb is not None else _float(a.get("estimated_mb"))
        if key is not None and mb is not None:
            out[key] = out.get(key, 0.0) + mb
    return out


_GpuFact = tuple[str, dict[str, Any], str | None, float | None]
_ReadingFact = tuple[str, dict[str, Any], int, str, tuple[tuple[str, float | None], ...]]
_DeviceFacts = tuple[list[_GpuFact], list[_ReadingFact], dict[str, float]]


def _device_facts(w: WorkerView) -> _DeviceFacts:
    """The worker's GPU identities, NVML readings and model allocations, each with its device
    key, checked once per heartbeat (kept in ``w.memo``)."""
    found: _DeviceFacts | None = w.memo.get(("devices", None))
    if found is not None:
        return found
    ident: dict[int, str] = {}
    gpus: list[_GpuFact] = []
    for g in worker_gpus(w):
        key = device_key(w.hostname, _str(g.get("uuid")) or None, _int(g.get("index")))
        ident[_int(g.get("index"))] = key
        gpus.append((key, g, _str(g.get("name")) or None, _float(g.get("total_memory_mb"))))
    reads: list[_ReadingFact] = []
    for r in readings(w):
        values = tuple(
            (f, value)
            for f in _READ_FIELDS
            if (value := _float(r.get(f))) is not None or f != "memory_total_mb"
        )
        reads.append((reading_key(w, r), r, _int(r.get("index")), _str(r.get("name")), values))
    found = (gpus, reads, _allocations_by_key(w, ident))
    w.memo[("devices", None)] = found
    return found


def build_devices(workers: Iterable[WorkerView]) -> list[DeviceView]:
    """One view per physical GPU; the newest heartbeat's reading wins; sorted by key."""
    devices: dict[str, DeviceView] = {}

    def get(key: str, w: WorkerView, src: dict[str, Any]) -> DeviceView:
        d = devices.get(key)
        if d is None:
            uuid = _str(src.get("uuid")) or None
            d = DeviceView(key, w.hostname, _int(src.get("index")), uuid, None,
                           None, None, None, None, None, None, None, [])  # fmt: skip
            devices[key] = d
        if w.name not in d.workers:
            d.workers.append(w.name)
        return d

    for w in sorted(workers, key=lambda w: w.updated_at):
        gpus, reads, allocated = _device_facts(w)
        for key, g, name, total_mb in gpus:
            d = get(key, w, g)
            d.name = d.name or name
            if d.memory_total_mb is None:
                d.memory_total_mb = total_mb
        for key, r, index, name, values in reads:
            d = get(key, w, r)
            d.index, d.has_reading = index, True
            d.name = name or d.name
            for f, value in values:
                setattr(d, f, value)
        for key, mb in allocated.items():
            if key in devices:
                devices[key].allocated_mb = round(devices[key].allocated_mb + mb, 3)
    for d in devices.values():
        d.workers.sort()
    return [devices[k] for k in sorted(devices)]


def build_models(
    workers: Iterable[WorkerView],
    known: Iterable[str],
    sums: MutableMapping[str, tuple[list[Any], dict[str, Any]]] | None = None,
) -> dict[str, ModelView]:
    """Every known model (``state="absent"`` without a worker) and every model a worker serves.

    Their histograms are summed when first read (``monitoring.model_hists.merged``).
    ``sums`` (model -> the parts last summed and their sum, kept by the caller across
    snapshots) spares summing the same heartbeats again."""
    grouped: dict[str, list[_Served]] = {m: [] for m in known}
    for w in workers:
        for model_id, facts in _model_facts(w):
            grouped.setdefault(model_id, []).append((w, facts))
    if sums is not None:
        for model_id in [m for m in sums if m not in grouped]:
            del sums[model_id]
    return {m: _model(m, grouped[m], sums) for m in sorted(grouped)}


#: A worker serving a model, and its state, version (or None), COUNTERS and in_flight.
_Served = tuple[WorkerView, tuple[Any, ...]]


def _model_facts(w: WorkerView) -> list[tuple[str, tuple[Any, ...]]]:
    """Per model of the worker: its state, version (or None), COUNTERS and in_flight (read
    once per heartbeat, kept in ``w.memo``)."""
    found: list[tuple[str, tuple[Any, ...]]] | None = w.memo.get(("models", None))
    if found is None:
        found = []
        for model_id, entry in w.models.items():
            stats = _dict(entry.get("stats"))
            version = entry.get("version")
            found.append((model_id, (
                _str(entry.get("state"), "unknown"),
                version if isinstance(version, str) else None,
                *(_int(stats.get(c)) for c in COUNTERS),
                _int(entry.get("in_flight")),
            )))  # fmt: skip
        w.memo[("models", None)] = found
    return found


def _model(
    model_id: str,
    served: list[_Served],
    sums: MutableMapping[str, tuple[list[Any], dict[str, Any]]] | None,
) -> ModelView:
    states = {w.name: f[0] for w, f in served}
    best = max(states.values(), key=lambda s: _RANK.get(s, 0), default="absent")
    versions = {f[1] for _, f in served if f[1] is not None}
    frames, ok, errors, expired, batches, in_flight = (
        map(sum, zip(*(f[2:] for _, f in served), strict=True)) if served else (0,) * 6
    )
    return ModelView(
        model_id=model_id,
        versions=sorted(versions),
        states=states,
        state=best,
        frames=frames,
        ok=ok,
        errors=errors,
        expired=expired,
        batches=batches,
        in_flight=in_flight,
        workers=[w.name for w, _ in served],
        histograms=lambda: merged(model_id, [w for w, _ in served], sums),
    )
