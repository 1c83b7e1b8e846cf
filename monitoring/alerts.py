"""Alert rules over cluster snapshots: pending → firing → resolved, kept in Redis.

Rules are data (:class:`Rule`): a threshold from Settings, a duration the
condition must hold, and a function that reads ``(subject, value)`` pairs from a
:class:`~monitoring.cluster.ClusterSnapshot`. :class:`AlertEngine` evaluates them
with an injected clock, stores active alerts, a capped history and a per-day
count in Redis (so a restarted monitor keeps them) and notifies on each change.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import redis

from framepool import keys
from framepool.log import get_logger
from framepool.settings import Settings

if TYPE_CHECKING:
    from monitoring.cluster import ClusterSnapshot

log = get_logger(__name__)

DAY_COUNTER_TTL_S = 2 * 86400
#: model_health_status values the collector exports (ready 1, degraded 0, unhealthy -1).
HEALTH_VALUE = {"degraded": 0.0, "unhealthy": -1.0}


def iso_z(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with a ``Z`` suffix (second precision)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


@dataclass
class Alert:
    """One occurrence of a rule on one subject (``id`` = ``rule:subject``)."""

    id: str
    rule: str
    severity: str  # "warning" | "critical"
    message: str
    metric: str
    value: float | None
    subject: str  # device key, model id, worker name or queue name
    timestamp: str  # ISO 8601 Z of when it fired (the reference's field)
    started_at: float
    resolved_at: float | None = None
    state: str = "active"  # "active" | "resolved"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Reading(NamedTuple):
    """What a rule's extractor yields: a subject, its value, and optionally since when it holds."""

    subject: str
    value: float | None
    since: float | None = None


@dataclass(frozen=True)
class Rule:
    """A condition ``value > threshold`` (any reading when threshold is None) held ``for_s``."""

    name: str
    severity: str
    metric: str
    threshold: float | None
    for_s: float
    message: str  # str.format template: {subject} {value} {threshold} {for_s}
    extract: Callable[[ClusterSnapshot], Iterable[Reading]]

    def breached(self, value: float | None) -> bool:
        if self.threshold is None:
            return True
        return value is not None and value > self.threshold

    def render(self, subject: str, value: float | None) -> str:
        return self.message.format(
            subject=subject, value=value, threshold=self.threshold or 0.0, for_s=self.for_s
        )


class QueueGrowth:
    """Last depth per queue and since when it has grown (non-decreasing, at least one
    rise): a run begins at the last reading before its first rise, so a quiet queue's
    first frames are not "growing" since it was first seen."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[int, float, bool]] = {}  # queue -> (depth, since, rose)

    def update(self, snap: ClusterSnapshot, now: float) -> None:
        seen: dict[str, tuple[int, float, bool]] = {}
        for q in snap.queues.values():
            prev = self._state.get(q.queue)
            if prev is None or q.depth < prev[0]:
                seen[q.queue] = (q.depth, now, False)  # a new run starts here
            elif q.depth == prev[0] and not prev[2]:
                seen[q.queue] = (q.depth, now, False)  # flat, never risen: not begun yet
            else:
                seen[q.queue] = (q.depth, prev[1], prev[2] or q.depth > prev[0])
        self._state = seen

    def readings(self, _snap: ClusterSnapshot) -> list[Reading]:
        return [Reading(q, float(d), since) for q, (d, since, rose) in self._state.items() if rose]


def _devices(attr: str) -> Callable[[ClusterSnapshot], list[Reading]]:
    def extract(snap: ClusterSnapshot) -> list[Reading]:
        return [Reading(d.key, getattr(d, attr)) for d in snap.devices]

    return extract


def _models(state: str) -> Callable[[ClusterSnapshot], list[Reading]]:
    def extract(snap: ClusterSnapshot) -> list[Reading]:
        return [Reading(m, HEALTH_VALUE[state]) for m, v in snap.models.items() if v.state == state]

    return extract


def default_rules(settings: Settings, growth: QueueGrowth) -> list[Rule]:
    """The monitor's rules with thresholds and durations from ``settings``."""
    s = settings
    return [
        Rule("gpu_utilization_high", "warning", "gpu_utilization", s.alert_gpu_utilization_percent,
             s.alert_gpu_utilization_for_seconds,
             "GPU utilization above {threshold:g}% for {for_s:g} seconds",
             _devices("utilization_percent")),
        Rule("gpu_memory_high", "critical", "memory_usage", s.alert_gpu_memory_percent, 0.0,
             "GPU memory usage above {threshold:g}%", _devices("memory_percent")),
        Rule("gpu_temperature_high", "warning", "temperature", s.alert_gpu_temperature_celsius,
             0.0, "GPU temperature above {threshold:g}°C", _devices("temperature_c")),
        Rule("queue_frames_too_old", "warning", "queue_oldest_age", s.frame_max_age_ms / 1000.0,
             0.0, "Oldest frame in {subject} older than {threshold:g} seconds",
             lambda snap: [Reading(q.queue, q.oldest_age_s) for q in snap.queues.values()]),
        Rule("queue_growing", "warning", "queue_depth", None, s.alert_queue_growth_for_seconds,
             "Queue {subject} growing for {for_s:g} seconds", growth.readings),
        Rule("worker_gone", "critical", "worker_heartbeat", None, 0.0,
             "Worker {subject} heartbeat missing", lambda snap: [Reading(w, None) for w in snap.gone]),
        Rule("model_unhealthy", "critical", "model_health", None, 0.0,
             "Model {subject} is unhealthy", _models("unhealthy")),
        Rule("model_degraded", "warning", "model_health", None, 0.0,
             "Model {subject} is degraded", _models("degraded")),
    ]  # fmt: skip


class WebhookNotifier:
    """POST an alert's JSON to a URL off-thread; 3 tries with backoff; never raises."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        tries: int = 3,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url, self.timeout_s, self.tries = url, timeout_s, tries
        self.backoff_s, self._sleep = backoff_s, sleep

    def __call__(self, alert: Alert) -> None:
        threading.Thread(target=self.send, args=(alert,), name="alert-webhook", daemon=True).start()

    def send(self, alert: Alert) -> bool:
        """Deliver synchronously; True on a 2xx reply, False after the last failed try."""
        body = json.dumps(alert.to_dict()).encode()
        for attempt in range(1, self.tries + 1):
            try:
                req = urllib.request.Request(
                    self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
                )
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    if 200 <= resp.status < 300:
                        return True
                    error = f"HTTP {resp.status}"
            except Exception as exc:  # URLError, HTTPError, timeouts, bad URLs
                error = f"{type(exc).__name__}: {exc}"
            log.warning("alert_webhook_failed", alert_id=alert.id, attempt=attempt, error=error)
            if attempt < self.tries:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
        return False


def _parse(raw: bytes | str) -> Alert | None:
    try:
        return Alert.from_dict(json.loads(raw))
    except (ValueError, TypeError) as exc:
        log.warning("alert_record_invalid", error=str(exc))
        return None


class AlertEngine:
    """Evaluates rules on snapshots; state in Redis with an in-memory fallback."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        notify: Callable[[Alert], None] | None = None,
        rules: list[Rule] | None = None,
    ) -> None:
        self.client, self.settings, self.clock = client, settings, clock
        if notify is None and settings.alert_webhook_url:
            notify = WebhookNotifier(settings.alert_webhook_url)
        self.notify = notify
        self.growth = QueueGrowth()
        self.rules = rules if rules is not None else default_rules(settings, self.growth)
        self._pending: dict[str, float] = {}  # alert id -> since when the condition holds
        self._active: dict[str, Alert] = {}
        self._history: deque[Alert] = deque(maxlen=settings.alert_history_size)
        self._day_counts: dict[str, int] = {}
        self._lock = threading.Lock()  # evaluate runs in a poller thread, readers in others
        self._loaded = self._load()

    def _load(self) -> bool:
        """Read active alerts left by an earlier monitor; False if Redis did not answer."""
        try:
            raw = self.client.hgetall(keys.ALERTS_ACTIVE)
        except redis.RedisError as exc:
            log.warning("alerts_load_failed", error=str(exc))
            return False
        for alert in filter(None, map(_parse, raw.values())):
            self._active.setdefault(alert.id, alert)
        return True

    def evaluate(self, snap: ClusterSnapshot) -> list[Alert]:
        """Apply every rule to ``snap``; return the alerts that fired or resolved now."""
        with self._lock:
            return self._evaluate(snap)

    def _evaluate(self, snap: ClusterSnapshot) -> list[Alert]:
        if not self._loaded:
            self._loaded = self._load()
        now = self.clock()
        self.growth.update(snap, now)
        changed: list[Alert] = []
        for rule in self.rules:
            try:
                breaches = {r.subject: r for r in rule.extract(snap) if rule.breached(r.value)}
            except Exception as exc:  # one broken rule must not stop the others
                log.warning("alert_rule_failed", rule=rule.name, error=repr(exc))
                continue
            for subject, reading in breaches.items():
                aid = f"{rule.name}:{subject}"
                if aid in self._active:
                    continue
                since = self._pending.setdefault(
                    aid, now if reading.since is None else reading.since
                )
                if now - since >= rule.for_s:
                    del self._pending[aid]
                    changed.append(self._fire(rule, reading, now))
            for aid in [a for a in self._pending if a.split(":", 1)[0] == rule.name]:
                if aid.split(":", 1)[1] not in breaches:
                    del self._pending[aid]
            for alert in [a for a in self._active.values() if a.rule == rule.name]:
                if alert.subject not in breaches:
                    changed.append(self._resolve(alert, now))
        names = {rule.name for rule in self.rules}
        for alert in [a for a in self._active.values() if a.rule not in names]:
            changed.append(self._resolve(alert, now))  # left by a rule that no longer exists
        return changed

    def _fire(self, rule: Rule, reading: Reading, now: float) -> Alert:
        subject, value = reading.subject, reading.value
        alert = Alert(
            f"{rule.name}:{subject}", rule.name, rule.severity, rule.render(subject, value),
            rule.metric, value, subject, iso_z(now), now,
        )  # fmt: skip
        self._active[alert.id] = alert
        day = utc_day(now)
        self._day_counts[day] = self._day_counts.get(day, 0) + 1
        log.info("alert_fired", alert_id=alert.id, severity=alert.severity, value=value)
        return self._record(alert, day)

    def _resolve(self, alert: Alert, now: float) -> Alert:
        del self._active[alert.id]
        done = Alert.from_dict({**alert.to_dict(), "resolved_at": now, "state": "resolved"})
        log.info("alert_resolved", alert_id=done.id, duration_s=round(now - done.started_at, 3))
        return self._record(done, None)

    def _record(self, alert: Alert, day: str | None) -> Alert:
        """Write a fire (``day`` set: also count it) or a resolve to Redis, then notify."""
        self._history.appendleft(alert)
        doc = json.dumps(alert.to_dict())
        try:
            pipe = self.client.pipeline(transaction=False)
            if alert.state == "active":
                pipe.hset(keys.ALERTS_ACTIVE, alert.id, doc)
            else:
                pipe.hdel(keys.ALERTS_ACTIVE, alert.id)
            pipe.lpush(keys.ALERTS_HISTORY, doc)
            pipe.ltrim(keys.ALERTS_HISTORY, 0, self.settings.alert_history_size - 1)
            if day is not None:
                pipe.incr(keys.alerts_day_counter(day))
                pipe.expire(keys.alerts_day_counter(day), DAY_COUNTER_TTL_S)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("alerts_store_failed", alert_id=alert.id, error=str(exc))
        if self.notify is not None:
            try:
                self.notify(alert)
            except Exception as exc:  # a notifier must never stop evaluation
                log.warning("alert_notify_failed", alert_id=alert.id, error=str(exc))
        return alert

    def active(self) -> list[Alert]:
        """Active alerts, newest first."""
        with self._lock:
            alerts = list(self._active.values())
        return sorted(alerts, key=lambda a: a.started_at, reverse=True)

    def history(self, limit: int = 50, severity: str | None = None) -> list[Alert]:
        """Past and active alerts, newest first, one entry per occurrence (latest state).

        ``severity`` None or ``"all"`` keeps every alert. The Redis list holds events
        (a fire, later its resolve), newest first; a resolve shadows its fire.
        """
        try:
            raw = self.client.lrange(keys.ALERTS_HISTORY, 0, -1)
            events = [a for a in map(_parse, raw) if a is not None]
        except redis.RedisError as exc:
            log.warning("alerts_history_failed", error=str(exc))
            with self._lock:
                events = list(self._history)
        seen: dict[tuple[str, float], Alert] = {}
        for event in events:
            seen.setdefault((event.id, event.started_at), event)
        rows = sorted(seen.values(), key=lambda a: a.started_at, reverse=True)
        if severity not in (None, "all"):
            rows = [a for a in rows if a.severity == severity]
        return rows[: max(0, limit)]

    def count_today(self) -> int:
        """Alerts fired on the clock's current UTC day."""
        day = utc_day(self.clock())
        try:
            raw = self.client.get(keys.alerts_day_counter(day))
            return int(raw) if raw is not None else 0
        except (redis.RedisError, ValueError) as exc:
            log.warning("alerts_count_failed", error=str(exc))
            return self._day_counts.get(day, 0)
