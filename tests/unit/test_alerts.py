"""Alert rules and engine: durations, resolve, persistence in Redis, webhook delivery."""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import fakeredis
import pytest
import redis

from framepool import keys
from framepool.settings import Settings
from monitoring.alerts import Alert, AlertEngine, Rule, WebhookNotifier, default_rules
from monitoring.cluster import ClusterSnapshot, DeviceView, ModelView, QueueView

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def device(
    key: str = "host/GPU-0",
    util: float | None = 10.0,
    used: float | None = 1000.0,
    total: float | None = 10000.0,
    temp: float | None = 50.0,
) -> DeviceView:
    host, _, ident = key.partition("/")
    return DeviceView(
        key=key, hostname=host, index=0, uuid=ident, name="Test GPU", utilization_percent=util,
        memory_used_mb=used, memory_total_mb=total, temperature_c=temp, power_w=None,
        sm_clock_mhz=None, mem_clock_mhz=None, workers=["w1@host"],
    )  # fmt: skip


def qview(model_id: str = "m", depth: int = 0, oldest: float | None = None) -> QueueView:
    return QueueView(
        model_id=model_id, queue=keys.queue_name(model_id), depth=depth, oldest_age_s=oldest,
        dropped={},
    )  # fmt: skip


def mview(model_id: str = "m", state: str = "ready") -> ModelView:
    return ModelView(
        model_id=model_id, versions=["1.0.0"], states={"w1@host": state}, state=state, frames=0,
        ok=0, errors=0, expired=0, batches=0, in_flight=0, timings_ms={}, batch_size_hist={},
        frame_size_bytes={}, workers=["w1@host"],
    )  # fmt: skip


def snap(
    clock: Clock,
    devices: list[DeviceView] | None = None,
    queues: list[QueueView] | None = None,
    models: list[ModelView] | None = None,
    gone: list[str] | None = None,
) -> ClusterSnapshot:
    devs = devices or []
    return ClusterSnapshot(
        taken_at=clock(), workers=[], gone=gone or [],
        queues={q.model_id: q for q in queues or []}, devices=devs,
        models={m.model_id: m for m in models or []}, gpu_available=bool(devs),
    )  # fmt: skip


@pytest.fixture()
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def notified() -> list[Alert]:
    return []


@pytest.fixture()
def engine(client: fakeredis.FakeRedis, clock: Clock, notified: list[Alert]) -> AlertEngine:
    return AlertEngine(client, Settings(), clock=clock, notify=notified.append)


def test_utilization_fires_only_after_30s_and_resolves(
    engine: AlertEngine, clock: Clock, notified: list[Alert]
) -> None:
    assert engine.evaluate(snap(clock, [device(util=95.0)])) == []
    clock.t += 29
    assert engine.evaluate(snap(clock, [device(util=92.0)])) == []
    clock.t += 2  # a dip below the threshold resets the pending timer
    assert engine.evaluate(snap(clock, [device(util=50.0)])) == []
    clock.t += 1
    assert engine.evaluate(snap(clock, [device(util=93.0)])) == []
    clock.t += 30
    [fired] = engine.evaluate(snap(clock, [device(util=92.3)]))
    assert (fired.severity, fired.metric, fired.value) == ("warning", "gpu_utilization", 92.3)
    assert fired.message == "GPU utilization above 90% for 30 seconds"
    assert fired.id == "gpu_utilization_high:host/GPU-0" and fired.subject == "host/GPU-0"
    assert fired.timestamp == "2026-11-22T12:01:02Z" and fired.state == "active"
    assert engine.active() == [fired] and notified == [fired]
    clock.t += 5
    assert engine.evaluate(snap(clock, [device(util=99.0)])) == []  # still active, no refire
    clock.t += 5
    [resolved] = engine.evaluate(snap(clock, [device(util=40.0)]))
    assert resolved.state == "resolved" and resolved.resolved_at == clock.t
    assert resolved.started_at == fired.started_at and engine.active() == []
    assert [a.state for a in notified] == ["active", "resolved"]


def test_memory_fires_critical_at_once_and_resolves_when_the_device_goes(
    engine: AlertEngine, clock: Clock
) -> None:
    [fired] = engine.evaluate(snap(clock, [device(used=9600.0, total=10000.0)]))
    assert (fired.severity, fired.metric) == ("critical", "memory_usage")
    assert fired.value == pytest.approx(96.0) and fired.message == "GPU memory usage above 95%"
    clock.t += 1
    [resolved] = engine.evaluate(snap(clock, []))
    assert resolved.id == fired.id and resolved.state == "resolved"


def test_temperature_and_missing_readings(engine: AlertEngine, clock: Clock) -> None:
    assert engine.evaluate(snap(clock, [device(util=None, used=None, temp=None)])) == []
    [fired] = engine.evaluate(snap(clock, [device(temp=91.0)]))
    assert (fired.rule, fired.severity, fired.metric, fired.value) == (
        "gpu_temperature_high", "warning", "temperature", 91.0,
    )  # fmt: skip
    assert "85" in fired.message


def test_oldest_frame_age_against_frame_max_age(engine: AlertEngine, clock: Clock) -> None:
    assert engine.evaluate(snap(clock, queues=[qview(depth=3, oldest=9.5)])) == []
    [fired] = engine.evaluate(snap(clock, queues=[qview(depth=3, oldest=12.0)]))
    assert (fired.metric, fired.value, fired.subject) == (
        "queue_oldest_age", 12.0, "framepool.infer.m",
    )  # fmt: skip
    [resolved] = engine.evaluate(snap(clock, queues=[qview(depth=0, oldest=None)]))
    assert resolved.state == "resolved"


def test_queue_growth_fires_after_60s_and_a_drop_resets(engine: AlertEngine, clock: Clock) -> None:
    def step(depth: int, dt: float = 10.0) -> list[Alert]:
        clock.t += dt
        return engine.evaluate(snap(clock, queues=[qview(depth=depth)]))

    assert engine.evaluate(snap(clock, queues=[qview(depth=5)])) == []  # baseline at T0
    for depth in (6, 7, 7, 9, 10):  # t = 10..50: non-decreasing, not yet 60 s
        assert step(depth) == []
    assert step(4) == []  # a drop: the run starts again from here (t = 60)
    for depth in (5, 6, 6, 8, 9):  # t = 70..110
        assert step(depth) == []
    [fired] = step(12)  # t = 120: growing since t = 60
    assert (fired.rule, fired.metric, fired.value) == ("queue_growing", "queue_depth", 12.0)
    assert fired.message == "Queue framepool.infer.m growing for 60 seconds"
    assert step(12) == []  # flat keeps it (non-decreasing)
    [resolved] = step(3)
    assert resolved.state == "resolved"


def test_a_quiet_minute_before_a_rise_is_not_growth(engine: AlertEngine, clock: Clock) -> None:
    """A queue flat at 0 for minutes, then frames: it has grown for 10 s, not since it
    was first seen (the alert fired at the first frame after any quiet minute)."""

    def step(depth: int, dt: float = 10.0) -> list[Alert]:
        clock.t += dt
        return engine.evaluate(snap(clock, queues=[qview(depth=depth)]))

    assert engine.evaluate(snap(clock, queues=[qview(depth=0)])) == []
    for _ in range(7):  # t = 10..70: idle
        assert step(0) == []
    for depth in (3, 9, 14, 20, 26):  # t = 80..120: growing since t = 70
        assert step(depth) == []
    [fired] = step(31)  # t = 130: 60 s of growth
    assert (fired.rule, fired.value) == ("queue_growing", 31.0)


def test_flat_queue_never_counts_as_growing(engine: AlertEngine, clock: Clock) -> None:
    for _ in range(20):
        clock.t += 10
        assert engine.evaluate(snap(clock, queues=[qview(depth=7)])) == []


def test_gone_worker_and_model_health(engine: AlertEngine, clock: Clock) -> None:
    changed = engine.evaluate(
        snap(clock, gone=["w2@host"], models=[mview("a", "unhealthy"), mview("b", "degraded")])
    )
    by_rule = {a.rule: a for a in changed}
    assert set(by_rule) == {"worker_gone", "model_unhealthy", "model_degraded"}
    assert by_rule["worker_gone"].severity == "critical"
    assert by_rule["worker_gone"].subject == "w2@host"
    assert by_rule["model_unhealthy"].severity == "critical"
    assert by_rule["model_unhealthy"].subject == "a"
    assert by_rule["model_degraded"].severity == "warning"
    clock.t += 1
    changed = engine.evaluate(snap(clock, models=[mview("a", "ready"), mview("b", "unhealthy")]))
    assert {(a.id, a.state) for a in changed} == {
        ("worker_gone:w2@host", "resolved"),
        ("model_unhealthy:a", "resolved"),
        ("model_degraded:b", "resolved"),
        ("model_unhealthy:b", "active"),
    }
    assert [a.id for a in engine.active()] == ["model_unhealthy:b"]


def test_active_history_and_count_today_with_a_day_rollover(
    client: fakeredis.FakeRedis, notified: list[Alert]
) -> None:
    clock = Clock(datetime(2026, 11, 22, 23, 59, 0, tzinfo=UTC).timestamp())
    engine = AlertEngine(client, Settings(), clock=clock, notify=notified.append)
    engine.evaluate(snap(clock, [device(used=9900.0)]))  # critical memory
    clock.t += 10
    engine.evaluate(snap(clock, [device(used=9900.0, temp=90.0)]))  # + warning temperature
    clock.t += 10
    engine.evaluate(snap(clock, [device(temp=90.0)]))  # memory resolves
    assert engine.count_today() == 2
    assert [a.rule for a in engine.active()] == ["gpu_temperature_high"]
    hist = engine.history()
    assert [(a.rule, a.state) for a in hist] == [
        ("gpu_temperature_high", "active"),
        ("gpu_memory_high", "resolved"),
    ]
    assert [a.rule for a in engine.history(severity="critical")] == ["gpu_memory_high"]
    assert [a.rule for a in engine.history(severity="warning")] == ["gpu_temperature_high"]
    assert len(engine.history(limit=1)) == 1 and len(engine.history(severity="all")) == 2
    ttl = client.ttl(keys.alerts_day_counter("2026-11-22"))
    assert 0 < ttl <= 2 * 86400
    clock.t += 60  # 2026-11-23 00:00:20
    assert engine.count_today() == 0
    engine.evaluate(snap(clock, [device(temp=90.0, used=9700.0)]))
    assert engine.count_today() == 1
    assert int(client.get(keys.alerts_day_counter("2026-11-22"))) == 2


def test_history_is_capped(client: fakeredis.FakeRedis, clock: Clock) -> None:
    engine = AlertEngine(client, Settings(alert_history_size=10), clock=clock)
    for i in range(20):
        clock.t += 1
        engine.evaluate(snap(clock, gone=[f"w{i}"]))
    assert client.llen(keys.ALERTS_HISTORY) == 10
    assert len(engine.history(limit=100)) <= 10


def test_a_restarted_engine_keeps_active_alerts_and_the_count(
    client: fakeredis.FakeRedis, clock: Clock
) -> None:
    first = AlertEngine(client, Settings(), clock=clock)
    [fired] = first.evaluate(snap(clock, gone=["w9@host"]))
    second = AlertEngine(client, Settings(), clock=clock, notify=lambda a: None)
    assert [a.to_dict() for a in second.active()] == [fired.to_dict()]
    assert second.count_today() == 1
    clock.t += 1
    assert second.evaluate(snap(clock, gone=["w9@host"])) == []  # no duplicate fire
    [resolved] = second.evaluate(snap(clock))
    assert resolved.id == fired.id and client.hlen(keys.ALERTS_ACTIVE) == 0


def test_redis_errors_are_logged_and_evaluation_goes_on(clock: Clock) -> None:
    class Down(fakeredis.FakeRedis):
        def pipeline(self, *a: Any, **k: Any) -> Any:
            raise redis.ConnectionError("redis away")

        def hgetall(self, *a: Any, **k: Any) -> Any:
            raise redis.ConnectionError("redis away")

        def lrange(self, *a: Any, **k: Any) -> Any:
            raise redis.ConnectionError("redis away")

        def get(self, *a: Any, **k: Any) -> Any:
            raise redis.ConnectionError("redis away")

    engine = AlertEngine(Down(), Settings(), clock=clock)
    [fired] = engine.evaluate(snap(clock, gone=["w"]))
    assert engine.active() == [fired] and engine.count_today() == 1
    assert [a.id for a in engine.history()] == [fired.id]


# --- webhook ---------------------------------------------------------------------------------


@pytest.fixture()
def webhook() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put({"body": json.loads(body), "type": self.headers["Content-Type"]})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_default_notifier_posts_the_alert_json(
    client: fakeredis.FakeRedis, clock: Clock, webhook: tuple[str, queue.Queue[dict[str, Any]]]
) -> None:
    url, received = webhook
    engine = AlertEngine(client, Settings(alert_webhook_url=url), clock=clock)
    assert isinstance(engine.notify, WebhookNotifier)
    [fired] = engine.evaluate(snap(clock, [device(used=9800.0)]))
    got = received.get(timeout=10)
    assert got["type"] == "application/json" and got["body"] == fired.to_dict()
    assert got["body"]["severity"] == "critical" and got["body"]["value"] == pytest.approx(98.0)
    clock.t += 1
    engine.evaluate(snap(clock, [device()]))
    assert received.get(timeout=10)["body"]["state"] == "resolved"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_failing_webhook_does_not_raise(client: fakeredis.FakeRedis, clock: Clock) -> None:
    sleeps: list[float] = []
    url = f"http://127.0.0.1:{_closed_port()}/hook"
    notifier = WebhookNotifier(url, timeout_s=1.0, sleep=sleeps.append)
    alert = Alert("r:s", "r", "warning", "m", "x", 1.0, "s", "2026-11-22T12:00:00Z", T0)
    assert notifier.send(alert) is False
    assert sleeps == [0.5, 1.0]  # 3 tries, backoff between them
    assert WebhookNotifier("not a url", sleep=sleeps.append).send(alert) is False
    engine = AlertEngine(client, Settings(alert_webhook_url=url), clock=clock)
    [fired] = engine.evaluate(snap(clock, gone=["w"]))  # delivery fails off-thread, no raise
    assert fired.state == "active"

    def broken(_: Alert) -> None:
        raise RuntimeError("notifier bug")

    engine = AlertEngine(fakeredis.FakeRedis(), Settings(), clock=clock, notify=broken)
    assert len(engine.evaluate(snap(clock, gone=["w"]))) == 1


def test_a_failing_rule_is_skipped_and_the_others_run(
    client: fakeredis.FakeRedis, clock: Clock
) -> None:
    def boom(_: ClusterSnapshot) -> list[Any]:
        raise KeyError("bad snapshot field")

    engine = AlertEngine(client, Settings(), clock=clock)
    broken = Rule("broken", "warning", "x", None, 0.0, "never", boom)
    engine.rules = [broken, *default_rules(Settings(), engine.growth)]
    [fired] = engine.evaluate(snap(clock, gone=["w"]))
    assert fired.rule == "worker_gone"
