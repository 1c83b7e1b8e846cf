"""From heartbeat JSON to views: parse one worker, merge GPUs per device, aggregate models.

Pure functions (no Redis): :func:`parse_worker` accepts whatever is stored under a
heartbeat key and never raises (unparseable JSON gives a worker in state
``invalid``); :func:`build_devices` groups NVML readings by physical GPU
(``"<hostname>/<uuid or index>"``) keeping the newest; :func:`build_models` sums
counters and histograms over the workers that serve each model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, MutableMapping
from operator import is_
from typing import Any

from monitoring import histograms
from monitoring.cluster_views import DeviceView, ModelView, WorkerView

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
        ident: dict[int, str] = {}
        for g in worker_gpus(w):
            key = device_key(w.hostname, _str(g.get("uuid")) or None, _int(g.get("index")))
            ident[_int(g.get("index"))] = key
            d = get(key, w, g)
            d.name = d.name or (_str(g.get("name")) or None)
            if d.memory_total_mb is None:
                d.memory_total_mb = _float(g.get("total_memory_mb"))
        for r in readings(w):
            d = get(reading_key(w, r), w, r)
            d.index, d.has_reading = _int(r.get("index")), True
            d.name = _str(r.get("name")) or d.name
            for f in _READ_FIELDS:
                value = _float(r.get(f))
                if value is not None or f != "memory_total_mb":
                    setattr(d, f, value)
        for key, mb in _allocations_by_key(w, ident).items():
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

    Their histograms are summed when first read, from the compact histograms kept per
    heartbeat (:func:`prepare_hists`). ``sums`` (model -> the parts last summed and
    their sum, kept by the caller across snapshots) spares summing the same parts again."""
    grouped: dict[str, list[tuple[WorkerView, dict[str, Any]]]] = {m: [] for m in known}
    for w in workers:
        for model_id, entry in w.models.items():
            grouped.setdefault(model_id, []).append((w, entry))
    if sums is not None:
        for model_id in [m for m in sums if m not in grouped]:
            del sums[model_id]
    return {m: _model(m, grouped[m], sums) for m in sorted(grouped)}


_PREPARED = ("hists", None)  # in w.memo once prepare_hists ran


def prepare_hists(w: WorkerView) -> None:
    """Compact (validate) every histogram of the heartbeat once, all models at once
    (``histograms.compact_many``), into ``w.memo`` for :func:`model_hists`. The reader
    calls it when it parses a heartbeat, so that a scrape only adds up compact parts."""
    memo = w.memo
    if _PREPARED in memo:
        return
    layout: list[tuple[str, list[str]]] = []
    flat: list[Any] = []
    for model_id, entry in w.models.items():
        stats = _dict(entry.get("stats"))
        timings = _dict(stats.get("timings_ms"))
        layout.append((model_id, [str(stage) for stage in timings]))
        flat += timings.values()
        flat += (stats.get("batch_size_hist"), stats.get("frame_size_bytes"))
    parts = histograms.compact_many(flat)
    at = 0
    for model_id, stages in layout:
        n = len(stages)
        memo[("hists", model_id)] = {
            "timings_ms": dict(zip(stages, parts[at : at + n], strict=True)),
            "batch_size_hist": parts[at + n],
            "frame_size_bytes": parts[at + n + 1],
        }
        at += n + 2
    memo[_PREPARED] = True


def model_hists(w: WorkerView, model_id: str) -> dict[str, Any]:
    """The worker's histograms of one model as :class:`~monitoring.histograms.Compact`:
    ``timings_ms`` (stage -> histogram), ``batch_size_hist``, ``frame_size_bytes``;
    computed once per heartbeat (kept in ``w.memo``, see :func:`prepare_hists`)."""
    key = ("hists", model_id)
    found = w.memo.get(key)
    if found is None:
        prepare_hists(w)
        found = w.memo.get(key)
    if found is None:  # a model the heartbeat does not serve: no histograms
        found = {
            "timings_ms": {},
            "batch_size_hist": histograms.compact(None),
            "frame_size_bytes": histograms.compact(None),
        }
    return found


def _numbers(w: WorkerView, model_id: str, entry: dict[str, Any]) -> tuple[int, ...]:
    """The worker's COUNTERS and in_flight for one model (kept per heartbeat in ``w.memo``)."""
    key = ("numbers", model_id)
    found = w.memo.get(key)
    if found is None:
        stats = _dict(entry.get("stats"))
        found = (*(_int(stats.get(c)) for c in COUNTERS), _int(entry.get("in_flight")))
        w.memo[key] = found
    return found


def _model(
    model_id: str,
    served: list[tuple[WorkerView, dict[str, Any]]],
    sums: MutableMapping[str, tuple[list[Any], dict[str, Any]]] | None,
) -> ModelView:
    states = {w.name: _str(e.get("state"), "unknown") for w, e in served}
    best = max(states.values(), key=lambda s: _RANK.get(s, 0), default="absent")
    versions = {v for _, e in served if isinstance(v := e.get("version"), str)}
    numbers = [_numbers(w, model_id, e) for w, e in served]
    frames, ok, errors, expired, batches, in_flight = (
        map(sum, zip(*numbers, strict=True)) if numbers else (0,) * 6
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
        histograms=lambda: _merged(model_id, served, sums),
    )


def _merged(
    model_id: str,
    served: list[tuple[WorkerView, dict[str, Any]]],
    sums: MutableMapping[str, tuple[list[Any], dict[str, Any]]] | None,
) -> dict[str, Any]:
    """The model's histograms summed over ``served``: the sum of their compact histograms,
    made once per heartbeat (``model_hists``), or the last sum while they are the same."""
    parts = [model_hists(w, model_id) for w, _ in served]
    last = sums.get(model_id) if sums is not None else None
    if last is not None and len(last[0]) == len(parts) and all(map(is_, last[0], parts)):
        return last[1]
    merged = merge_model_hists(parts)
    if sums is not None:
        sums[model_id] = (parts, merged)
    return merged


def merge_model_hists(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several :func:`model_hists` (``Compact`` in), as ``Hist`` dicts."""
    stages: dict[str, list[histograms.Compact]] = {}
    for h in parts:
        for stage, part in h["timings_ms"].items():
            stages.setdefault(stage, []).append(part)
    return {
        "timings_ms": {stage: histograms.merge_compact(ps) for stage, ps in sorted(stages.items())},
        "batch_size_hist": histograms.merge_compact(h["batch_size_hist"] for h in parts),
        "frame_size_bytes": histograms.merge_compact(h["frame_size_bytes"] for h in parts),
    }
