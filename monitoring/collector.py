"""Prometheus metrics rebuilt from the latest ClusterSnapshot at every scrape.

:class:`FramepoolCollector` is a custom collector: nothing is mutated between
scrapes, each one builds every family from the snapshot, so the series of a
worker that has gone (or a model it stopped serving) disappear on their own.
Register it in the service's own ``CollectorRegistry`` and serve :func:`render`.

Names: the fifteen metrics of the first reference document with its meaning,
labelled by ``worker`` (the worker's name), ``model_id``/``version`` and, for GPUs,
``gpu`` = the device key ``"<hostname>/<uuid>"`` (``"<hostname>/<index>"`` when NVML
gives no UUID; unique across hosts and stable across restarts) with ``hostname``
and ``uuid`` beside it. framepool's own: ``framepool_*`` and
``celery_queue_length{queue_name}``. Without a GPU the ``gpu_*`` families are
present with no samples. Latencies are converted from the workers' milliseconds
to seconds; histogram buckets are the workers' cumulative buckets plus ``+Inf``.

Counters and gauges are per worker; histograms are per model (``model_id``, and
``stage`` for ``framepool_stage_duration_seconds``), as in the reference: summed
over the model's workers, and over workers that have left or restarted since the
monitor started (``ClusterSnapshot.retired``), so they never go down. Per worker
they would be 160 histograms of ~20 series each for 32 workers of 5 models (40,000
lines a scrape) where 5 do. See docs/benchmarks.md (``bench monitor``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import CollectorRegistry

from framepool.log import get_logger
from monitoring.cluster import ClusterSnapshot
from monitoring.cluster_build import reading_key, readings
from monitoring.families import CounterFamily, Family, HistogramFamily, write_text
from monitoring.histograms import merge, prometheus_buckets

log = get_logger(__name__)

MB = 1024 * 1024
#: model_load_status: a model in one of these states is loaded (1), else 0.
LOADED = frozenset({"ready", "degraded", "unhealthy"})
#: model_health_status values (a state not listed here gets no sample).
HEALTH = {"ready": 1.0, "degraded": 0.0, "loading": 0.5, "unhealthy": -1.0, "failed": -1.0}
#: inference_requests_total{status} from the per-worker stats counters.
STATUS_COUNTERS = (("success", "ok"), ("failed", "errors"), ("expired", "expired"))

GPU_LABELS = ["gpu", "hostname", "uuid"]
M = ["model_id"]
MVW = ["model_id", "version", "worker"]


def _f(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _num(value: Any) -> float:
    number = _f(value)
    return 0.0 if number is None else number


def _field(item: Any, name: str) -> str:
    value = item.get(name) if isinstance(item, dict) else getattr(item, name, None)
    return "" if value is None else str(value)


class _Families:
    """Every family of one scrape, filled from a snapshot."""

    def __init__(self) -> None:
        c, g, h = CounterFamily, Family, HistogramFamily
        self.requests = c("inference_requests_total", "Frames that reached a result per model and worker by status (success|failed|expired); status=rejected has worker=\"\" and counts frames the producer refused on a full queue.", labels=["model_id", "worker", "status"])  # fmt: skip
        self.duration = h("inference_duration_seconds", "End-to-end frame latency (enqueue to result, the 'total' stage) in seconds, over the model's workers.", labels=M)  # fmt: skip
        self.queue_size = g("inference_queue_size", "Frames waiting in the model's queue (all priorities).", labels=["model_id"])  # fmt: skip
        self.concurrent = g("concurrent_requests_active", "Frames a worker has taken and not finished (sum of in_flight over its models).", labels=["worker"])  # fmt: skip
        self.load = g("model_load_status", "1 when the model is loaded in the worker (ready, degraded or unhealthy), 0 when loading or failed.", labels=MVW)  # fmt: skip
        self.health = g("model_health_status", "Model health in the worker: 1 ready, 0.5 loading, 0 degraded, -1 unhealthy or failed.", labels=MVW)  # fmt: skip
        self.infer_count = c("model_inference_count", "Frames the model ran in the worker (ok + errors).", labels=MVW)  # fmt: skip
        self.error_count = c("model_error_count", "Frames that failed in the model in the worker.", labels=MVW)  # fmt: skip
        self.mem_used = g("gpu_memory_used_bytes", "GPU memory in use (NVML, all processes).", labels=GPU_LABELS)  # fmt: skip
        self.mem_total = g("gpu_memory_total_bytes", "GPU memory in total (NVML).", labels=GPU_LABELS)  # fmt: skip
        self.mem_reserved = g("gpu_memory_reserved_bytes", "GPU memory framepool's workers allocated to models on this GPU (measured peak, else the manifest estimate).", labels=GPU_LABELS)  # fmt: skip
        self.util = g("gpu_utilization_percent", "GPU compute utilization (NVML).", labels=GPU_LABELS)  # fmt: skip
        self.temp = g("gpu_temperature_celsius", "GPU temperature (NVML).", labels=GPU_LABELS)  # fmt: skip
        self.decode = h("frame_decode_duration_seconds", "Frame decode time in the workers in seconds.", labels=M)  # fmt: skip
        self.frame_size = h("frame_size_bytes", "Size of the encoded frames the model's workers received.", labels=M)  # fmt: skip
        self.power = g("framepool_gpu_power_watts", "GPU power draw (NVML).", labels=GPU_LABELS)  # fmt: skip
        self.proc_mem = g("framepool_worker_process_gpu_memory_bytes", "GPU memory used by the worker's own process (NVML).", labels=["worker", "gpu"])  # fmt: skip
        self.depth = g("framepool_queue_depth", "Frames waiting in the model's queue (all priorities).", labels=["model_id"])  # fmt: skip
        self.oldest = g("framepool_queue_oldest_age_seconds", "Age of the oldest waiting frame (0 when the queue is empty).", labels=["model_id"])  # fmt: skip
        self.dropped = c("framepool_frames_dropped_total", "Frames dropped before inference by reason (queue_full, expired, superseded).", labels=["model_id", "reason"])  # fmt: skip
        self.duplicates = c("framepool_duplicate_results_total", "Frames executed more than once (redelivered after a lost worker or a visibility timeout) whose later result was not written again.", labels=["model_id"])  # fmt: skip
        self.batch_size = h("framepool_batch_size", "Frames per batch, over the model's workers.", labels=M)  # fmt: skip
        self.batch_wait = h("framepool_batch_wait_seconds", "Time a frame waited for its batch to fill, in seconds.", labels=M)  # fmt: skip
        self.stage = h("framepool_stage_duration_seconds", "Per-stage frame time in seconds (queue, batch_wait, decode, preprocess, host_to_device, inference, postprocess, total), over the model's workers.", labels=[*M, "stage"])  # fmt: skip
        self.up = g("framepool_worker_up", "1 for a worker with a live heartbeat, 0 for one whose heartbeat expired.", labels=["worker", "hostname"])  # fmt: skip
        self.alert = g("framepool_alert_active", "1 for each active alert.", labels=["rule", "severity", "subject"])  # fmt: skip
        self.celery = g("celery_queue_length", "Messages in the Celery queue (as celery-exporter names it).", labels=["queue_name"])  # fmt: skip
        self.recommended = g("framepool_recommended_workers", "Workers the model needs for its arrival rate, service rate and queue age (GET /api/v1/scaling, docs/scaling.md); for an autoscaler.", labels=["model_id"])  # fmt: skip
        self.model_workers = g("framepool_model_workers", "Live workers consuming the model's queue now.", labels=["model_id"])  # fmt: skip

    def all(self) -> list[Family]:
        return list(vars(self).values())


def build_families(
    snap: ClusterSnapshot | None, alerts: Iterable[Any] = (), scaling: Iterable[Any] = ()
) -> list[Family]:
    """Every metric family for ``snap`` (families without samples when it is ``None``);
    ``scaling``: the rows of ``ScalingTracker.report`` for it."""
    f = _Families()
    if snap is not None:
        _models(f, snap, _workers(f, snap))
        _gpus(f, snap)
        _queues(f, snap)
    for row in scaling:
        f.recommended.add_metric([row["model_id"]], row["recommended_workers"])
        f.model_workers.add_metric([row["model_id"]], row["current_workers"])
    for a in alerts:
        state = _field(a, "state")
        if state in ("", "active"):
            f.alert.add_metric([_field(a, "rule"), _field(a, "severity"), _field(a, "subject")], 1)
    return f.all()


def _workers(f: _Families, snap: ClusterSnapshot) -> set[str]:
    """Every per-worker series; returns the models some worker has statistics of."""
    with_stats: set[str] = set()
    for w in snap.workers:
        f.up.add_metric([w.name, w.hostname], 1)
        in_flight = 0.0
        for model_id, e in w.models.items():
            in_flight += _num(e.get("in_flight"))
            mvw = [model_id, _field(e, "version"), w.name]
            state = _field(e, "state")
            f.load.add_metric(mvw, 1 if state in LOADED else 0)
            if state in HEALTH:
                f.health.add_metric(mvw, HEALTH[state])
            f.infer_count.add_metric(mvw, _num(e.get("inferences")))
            f.error_count.add_metric(mvw, _num(e.get("errors")))
            stats = e.get("stats")
            if isinstance(stats, dict):
                with_stats.add(model_id)
                for status, key in STATUS_COUNTERS:
                    f.requests.add_metric([model_id, w.name, status], _num(stats.get(key)))
        f.concurrent.add_metric([w.name], in_flight)
        for r in readings(w):
            mb = _f(r.get("process_memory_mb"))
            if mb is not None:
                f.proc_mem.add_metric([w.name, reading_key(w, r)], mb * MB)
    for name in snap.gone:
        f.up.add_metric([name, name.rpartition("@")[2] if "@" in name else ""], 0)
    return with_stats


def _models(f: _Families, snap: ClusterSnapshot, with_stats: set[str]) -> None:
    """Histograms per model: its live workers' sums plus what left (``snap.retired``)."""
    for model_id in sorted(with_stats | set(snap.retired)):
        m, gone = snap.models.get(model_id), snap.retired.get(model_id)
        live = {} if m is None else m.timings_ms
        timings = live if gone is None else _sum_stages(live, gone["timings_ms"])
        labels = [model_id]
        for stage, hist in timings.items():
            buckets, total = prometheus_buckets(hist, 0.001)
            f.stage.add_metric([model_id, stage], buckets, total)
            family = _STAGE_FAMILIES.get(stage)
            if family is not None:
                getattr(f, family).add_metric(labels, buckets, total)
        for family, name in (("batch_size", "batch_size_hist"), ("frame_size", "frame_size_bytes")):
            parts = [getattr(m, name)] if m is not None else []
            hist = merge(parts + [gone[name]]) if gone is not None else parts[0]
            getattr(f, family).add_metric(labels, *prometheus_buckets(hist))


#: Stages that are also a metric of their own (the _Families attribute).
_STAGE_FAMILIES = {"total": "duration", "decode": "decode", "batch_wait": "batch_wait"}


def _sum_stages(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {s: merge(h[s] for h in (a, b) if s in h) for s in sorted(a.keys() | b.keys())}


def _gpus(f: _Families, snap: ClusterSnapshot) -> None:
    for d in snap.devices:
        labels = [d.key, d.hostname, d.uuid or ""]
        f.mem_reserved.add_metric(labels, d.allocated_mb * MB)
        for family, value, scale in (
            (f.mem_used, d.memory_used_mb, MB),
            (f.mem_total, d.memory_total_mb, MB),
            (f.util, d.utilization_percent, 1),
            (f.temp, d.temperature_c, 1),
            (f.power, d.power_w, 1),
        ):
            if value is not None:
                family.add_metric(labels, value * scale)


def _queues(f: _Families, snap: ClusterSnapshot) -> None:
    for model_id, q in snap.queues.items():
        f.queue_size.add_metric([model_id], q.depth)
        f.depth.add_metric([model_id], q.depth)
        f.celery.add_metric([q.queue], q.depth)
        if q.oldest_age_s is not None or q.depth == 0:
            f.oldest.add_metric([model_id], q.oldest_age_s or 0.0)
        f.requests.add_metric([model_id, "", "rejected"], q.dropped.get("queue_full", 0))
        for reason, n in sorted(q.dropped.items()):
            if reason == "duplicate":  # not a dropped frame: a second execution's result
                f.duplicates.add_metric([model_id], n)
            else:
                f.dropped.add_metric([model_id, reason], n)


@dataclass
class _Scrape:
    """What was built for one snapshot and set of active alerts."""

    snap: ClusterSnapshot | None
    alert_key: list[tuple[str, str, str]]
    families: list[Family]
    metrics: list[Metric] | None = None
    text: bytes | None = None


class FramepoolCollector:
    """A ``prometheus_client`` collector over ``get_snapshot()`` and ``alerts()``.

    Neither callable may break a scrape: an exception is logged and the scrape
    answers with empty families (and no alerts, for a failing ``alerts``).
    :meth:`text` is the exposition itself (what ``/metrics`` serves). Both are
    built once per snapshot and set of active alerts.
    """

    def __init__(
        self,
        get_snapshot: Callable[[], ClusterSnapshot | None],
        alerts: Callable[[], list[Any]] | None = None,
        scaling: Callable[[ClusterSnapshot], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.get_snapshot = get_snapshot
        self.alerts = alerts
        self.scaling = scaling
        self._last: _Scrape | None = None

    def describe(self) -> list[Metric]:
        """The families' names (no samples), so registering does not read Redis."""
        return [f.to_metric() for f in build_families(None)]

    def collect(self) -> Iterator[Metric]:
        scrape = self._scrape()
        if scrape.metrics is None:
            scrape.metrics = [f.to_metric() for f in scrape.families]
        yield from scrape.metrics

    def text(self) -> bytes:
        """The families in Prometheus' text format (``CONTENT_TYPE_LATEST``), as
        ``generate_latest`` writes them (:func:`monitoring.families.write_text`)."""
        scrape = self._scrape()
        if scrape.text is None:
            scrape.text = write_text(scrape.families)
        return scrape.text

    def _scrape(self) -> _Scrape:
        try:
            snap = self.get_snapshot()
        except Exception as exc:
            log.warning("metrics_snapshot_failed", error=repr(exc))
            snap = None
        active: list[Any] = []
        if self.alerts is not None:
            try:
                active = list(self.alerts())
            except Exception as exc:
                log.warning("metrics_alerts_failed", error=repr(exc))
        alert_key = [(_field(a, "rule"), _field(a, "subject"), _field(a, "state")) for a in active]
        last = self._last
        if last is not None and last.snap is snap and last.alert_key == alert_key:
            return last  # the same snapshot scraped again (several scrapers)
        rows: list[dict[str, Any]] = []
        if self.scaling is not None and snap is not None:
            try:
                rows = self.scaling(snap)
            except Exception as exc:
                log.warning("metrics_scaling_failed", error=repr(exc))
        self._last = _Scrape(snap, alert_key, build_families(snap, active, rows))
        return self._last


def make_registry(
    get_snapshot: Callable[[], ClusterSnapshot | None],
    alerts: Callable[[], list[Any]] | None = None,
) -> CollectorRegistry:
    """A fresh registry holding only a :class:`FramepoolCollector`."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(FramepoolCollector(get_snapshot, alerts))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (``CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)
