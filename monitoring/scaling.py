"""How many workers each model needs, and which workers ``framepool scale`` changes.

The recommendation (``GET /api/v1/scaling``, ``framepool_recommended_workers``), per
model, over the last ``SCALING_WINDOW_SECONDS`` (W) of monitor polls and heartbeats::

    λ  arrival rate, frames/s entering the queue
         = frames the workers completed / s (their heartbeat counters, each worker's
           rate between its own heartbeats, summed) + Δ(queue depth) / Δt
    μ  service rate of one worker, frames/s it completes when busy
         measured:  completed / s per consuming worker, over a window in which the
                    queue never emptied (every worker had frames waiting all along)
         estimated: until such a window, frames run / model time over the
                    window's batches, from the heartbeats' stage histograms
                    (host_to_device + inference + postprocess per batch); decode is
                    left out, so on a CPU-bound worker it is optimistic until the
                    first busy window
    B  backlog = queue depth when its oldest frame is older than
         SCALING_TARGET_QUEUE_AGE_SECONDS, else 0
    recommended = ceil((λ + B / SCALING_DRAIN_SECONDS) / (μ × SCALING_TARGET_UTILIZATION))

    0 when nothing arrives and nothing waits; at least 1 while frames arrive or
    wait; the current count while λ or μ is not known yet.

Current workers of a model are the live workers consuming its queue (the
``queues`` of their heartbeat; an older worker without that field: the workers
with the model loaded and ready). :func:`plan_consumers` is the pure choice
behind ``framepool scale``. See docs/scaling.md.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from framepool import keys
from framepool.settings import Settings
from monitoring.cluster import ClusterSnapshot, WorkerView

#: A model in one of these states takes frames.
USABLE = frozenset({"ready", "degraded"})
#: A worker in one of these states takes no new frames.
LEAVING = frozenset({"draining", "stopping", "stopped", "device_lost", "failed", "invalid"})
#: Stages that run in the model's thread, once per batch (each frame carries the batch's time).
MODEL_STAGES = ("host_to_device", "inference", "postprocess")
#: Seconds of samples needed before λ is reported.
MIN_SPAN_S = 2.0


@dataclass(frozen=True)
class ScalingPolicy:
    window_s: float = 30.0
    target_utilization: float = 0.8
    target_queue_age_s: float = 2.0
    drain_s: float = 30.0

    @classmethod
    def from_settings(cls, s: Settings) -> ScalingPolicy:
        return cls(
            s.scaling_window_seconds,
            s.scaling_target_utilization,
            s.scaling_target_queue_age_seconds,
            s.scaling_drain_seconds,
        )


def recommend(
    current: int,
    arrival: float | None,
    service: float | None,
    depth: int,
    oldest_age_s: float | None,
    policy: ScalingPolicy,
) -> tuple[int, str]:
    """The formula of the module docstring: (recommended workers, why)."""
    old = oldest_age_s is not None and oldest_age_s > policy.target_queue_age_s
    backlog = depth if old else 0
    if arrival is None:
        return current, "measuring: fewer than two samples in the window"
    if arrival <= 0 and depth == 0:
        return 0, "idle: no frames arriving or waiting"
    if not service:
        return max(current, 1), "service rate not known yet (no frames run): keeping the workers"
    need = (arrival + backlog / policy.drain_s) / (service * policy.target_utilization)
    n = max(1, math.ceil(need - 1e-9))
    why = (
        f"{arrival:.2f} frames/s arriving / ({service:.2f} frames/s per worker x "
        f"{policy.target_utilization:g} utilization)"
    )
    if backlog:
        why += (
            f" + {backlog} queued frames (oldest {oldest_age_s:.1f} s > "
            f"{policy.target_queue_age_s:g} s) drained in {policy.drain_s:g} s"
        )
    return n, why


def consumers(snap: ClusterSnapshot, model_id: str) -> list[str]:
    """Live workers taking ``model_id``'s frames (module docstring)."""
    return sorted(w.name for w in snap.workers if _consumes(w, model_id))


def _consumes(w: WorkerView, model_id: str) -> bool:
    if w.state in LEAVING:
        return False
    queues = w.raw.get("queues")
    if isinstance(queues, list):
        return keys.queue_name(model_id) in queues
    return (w.models.get(model_id) or {}).get("state") in USABLE


# ------------------------------------------------------------------ the tracker
def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True)
class _Beat:
    """One heartbeat's cumulative counters of one model in one worker."""

    at: float
    frames: float  # reached a result (any status): left the queue
    ran: float  # ran in the model (the inference histogram's count)
    batches: float
    model_ms: float  # sum over frames run of their batch's model time

    @classmethod
    def of(cls, at: float, entry: Mapping[str, Any]) -> _Beat:
        stats = _dict(entry.get("stats"))
        timings = _dict(stats.get("timings_ms"))
        hists = [_dict(timings.get(stage)) for stage in MODEL_STAGES]
        return cls(
            at,
            _num(stats.get("frames")),
            _num(hists[1].get("count")),
            _num(stats.get("batches")),
            sum((_num(h.get("sum")) for h in hists), 0.0),
        )


@dataclass
class _Model:
    depths: deque[tuple[float, int]] = field(default_factory=deque)
    measured: float | None = None  # μ from the last busy window
    measured_at: float | None = None


class ScalingTracker:
    """Keeps W seconds of heartbeats and queue depths; :meth:`report` applies the formula."""

    def __init__(self, policy: ScalingPolicy | None = None) -> None:
        self.policy = policy or ScalingPolicy()
        self._beats: dict[tuple[str, str], deque[_Beat]] = {}
        self._models: dict[str, _Model] = {}
        self._seen: dict[str, Any] = {}  # worker -> the models of its heartbeat taken last

    def update(self, snap: ClusterSnapshot) -> None:
        start = snap.taken_at - self.policy.window_s
        seen = {w.name: w.models for w in snap.workers}
        for w in snap.workers:
            if self._seen.get(w.name) is w.models:
                continue  # the same heartbeat as before (views of it share its models)
            for model_id, entry in w.models.items():
                key = (w.name, model_id)
                beats = self._beats.setdefault(key, deque())
                if beats and w.updated_at <= beats[-1].at:
                    continue  # the same heartbeat as before
                beat = _Beat.of(w.updated_at, entry)
                if beats and beat.frames < beats[-1].frames:
                    beats.clear()  # the worker restarted: its counters began again
                beats.append(beat)
                while len(beats) > 2 and beats[0].at < start:
                    beats.popleft()
        self._seen = seen
        for key in [k for k in self._beats if k[1] not in seen.get(k[0], ())]:
            del self._beats[key]
        for model_id, q in snap.queues.items():
            m = self._models.setdefault(model_id, _Model())
            m.depths.append((snap.taken_at, q.depth))
            while m.depths and m.depths[0][0] < start:
                m.depths.popleft()
            self._measure(snap, model_id, m)

    def _completed(self, model_id: str, workers: Sequence[str] | None = None) -> float | None:
        """Frames/s the model's workers completed over the window (each between its beats)."""
        rates = []
        wanted = None if workers is None else set(workers)
        for (name, m), beats in self._beats.items():
            if m != model_id or (wanted is not None and name not in wanted):
                continue
            if len(beats) >= 2 and beats[-1].at > beats[0].at:
                rates.append((beats[-1].frames - beats[0].frames) / (beats[-1].at - beats[0].at))
        return sum(rates) if rates else None

    def _measure(self, snap: ClusterSnapshot, model_id: str, m: _Model) -> None:
        """μ measured: the window's samples all saw a queue, so every consumer was busy."""
        span = m.depths[-1][0] - m.depths[0][0] if m.depths else 0.0
        if span < self.policy.window_s / 2 or any(d == 0 for _, d in m.depths):
            return
        names = consumers(snap, model_id)
        done = self._completed(model_id, names)
        if names and done:
            m.measured, m.measured_at = done / len(names), snap.taken_at

    def _estimated(self, model_id: str) -> float | None:
        """μ from model time: frames run per second the model was busy (workers pooled).

        Each frame carries its batch's model time, so a batch's time is the mean over its
        frames times the batches: exact for batches of one size, hence taken over the
        window's batches (the worker's whole life when none ran in the window)."""
        ran = busy_s = 0.0
        for (_, m), beats in self._beats.items():
            if m != model_id or not beats:
                continue
            first, last = beats[0], beats[-1]
            r, b, ms = (
                last.ran - first.ran,
                last.batches - first.batches,
                last.model_ms - first.model_ms,
            )
            if r <= 0 or b <= 0:
                r, b, ms = last.ran, last.batches, last.model_ms
            if r > 0 and b > 0:
                ran += r
                busy_s += b * (ms / r) / 1000.0
        return ran / busy_s if busy_s > 0 else None

    def model(self, snap: ClusterSnapshot, model_id: str) -> dict[str, Any]:
        """The recommendation for one model, with what it was computed from."""
        m = self._models.get(model_id, _Model())
        q = snap.queues.get(model_id)
        depth, age = (q.depth, q.oldest_age_s) if q is not None else (0, None)
        names = consumers(snap, model_id)
        arrival: float | None = None
        completed = self._completed(model_id)
        measuring = bool(names) and completed is None  # consumers, no two beats yet
        if not measuring and m.depths and m.depths[-1][0] - m.depths[0][0] >= MIN_SPAN_S:
            (t0, d0), (t1, d1) = m.depths[0], m.depths[-1]
            arrival = max(0.0, (completed or 0.0) + (d1 - d0) / (t1 - t0))
        service, source = m.measured, "measured" if m.measured else None
        if service is None:
            service = self._estimated(model_id)
            source = "estimated" if service else None
        n, why = recommend(len(names), arrival, service, depth, age, self.policy)
        return {
            "model_id": model_id,
            "current_workers": len(names),
            "workers": names,
            "recommended_workers": n,
            "reason": why,
            "arrival_frames_per_s": _round(arrival),
            "completed_frames_per_s": _round(completed),
            "service_frames_per_s": _round(service),
            "service_rate_source": source,
            "queue_depth": depth,
            "oldest_age_s": age,
        }

    def report(self, snap: ClusterSnapshot) -> list[dict[str, Any]]:
        """:meth:`model` for every model the snapshot knows (queues and workers)."""
        models = sorted(set(snap.queues) | set(snap.models))
        return [self.model(snap, m) for m in models]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ------------------------------------------------------------- framepool scale
@dataclass
class ConsumerChange:
    """What ``framepool scale`` does for one model: workers that start or stop consuming."""

    model_id: str
    target: int
    before: list[str]
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    short: int = 0  # workers asked for that no worker with the model loaded could give

    @property
    def after(self) -> list[str]:
        return sorted((set(self.before) | set(self.add)) - set(self.remove))


def plan_consumers(
    model_id: str,
    target: int,
    consuming: Mapping[str, Sequence[str]],
    loaded: Mapping[str, bool],
) -> ConsumerChange:
    """Which workers start or stop consuming ``model_id``'s queue so that ``target`` do.

    ``consuming``: each live worker's queues (Celery's ``active_queues``); ``loaded``:
    whether it has the model loaded and ready (a worker serves only what it loaded).
    Added first: the workers consuming the fewest queues; removed first: the ones
    consuming the most (ties by name, so ``gpu0-1`` keeps its models longest)."""
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    queue = keys.queue_name(model_id)
    before = sorted(w for w, qs in consuming.items() if queue in qs)
    change = ConsumerChange(model_id, target, before)
    if target > len(before):
        spare = [w for w in consuming if w not in before and loaded.get(w)]
        spare.sort(key=lambda w: (len(consuming[w]), w))
        change.add = spare[: target - len(before)]
        change.short = target - len(before) - len(change.add)
    elif target < len(before):
        busy = sorted(before, key=lambda w: (len(consuming[w]), w), reverse=True)
        change.remove = busy[: len(before) - target]
    return change
