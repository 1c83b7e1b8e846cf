"""``framepool monitor``: Prometheus metrics, health, the GPU API, the live stream, the dashboard.

One monitor sees every worker on every host because it reads Redis only: a
poller takes a :class:`ClusterSnapshot` every ``MONITOR_POLL_INTERVAL_SECONDS``
(heartbeats, queues, drops), evaluates the alert rules on it and pushes one
``gpu_metrics`` message to the WebSocket clients (built only while one is
connected). Every endpoint answers from the latest snapshot, so a scrape or a
page view never waits on Redis; /metrics is rendered once per snapshot.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from framepool.heap import freeze_startup_heap
from framepool.log import get_logger
from framepool.settings import Settings
from monitoring import responses as views
from monitoring.alerts import Alert, AlertEngine
from monitoring.auth import RateLimiter, needs_token, presented_token, token_ok
from monitoring.cluster import ClusterReader, ClusterSnapshot
from monitoring.collector import FramepoolCollector
from monitoring.rates import RateTracker
from monitoring.scaling import ScalingPolicy, ScalingTracker
from monitoring.stream import StreamHub

log = get_logger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: Container objects allocated (net) between two young-generation collections in the
#: monitor's process; Python's default is 700.
GC_GEN0_THRESHOLD = 10_000


def configure_gc() -> None:
    """Garbage-collector settings for the monitor's own process, once the app is built.

    Every poll parses changed heartbeats and drops the previous snapshot: thousands
    of lists and dicts that reference counting frees, with no cycles among them.
    With Python's defaults the cyclic collector kept running over them and over
    everything imported (FastAPI, pydantic, uvicorn), a third of the monitor's CPU
    with 32 workers (docs/benchmarks.md, ``bench monitor``). So: what exists now
    is frozen out of its way (``gc.freeze``), and the young generation is
    collected after :data:`GC_GEN0_THRESHOLD` new objects instead of 700.
    """
    freeze_startup_heap()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)


class MonitorState:
    """The latest snapshot and what is derived from it; refreshed by the poller."""

    def __init__(self, settings: Settings, reader: ClusterReader, alerts: AlertEngine) -> None:
        self.settings = settings
        self.reader = reader
        self.alerts = alerts
        self.snapshot: ClusterSnapshot | None = None
        self.previous: ClusterSnapshot | None = None
        self.rates = RateTracker()
        self.scaling = ScalingTracker(ScalingPolicy.from_settings(settings))
        self.started = time.monotonic()
        self.redis_ok = False
        self.polls = 0
        self.demand_at = 0.0  # monotonic time of the last API or /metrics read
        self._refreshing = threading.Lock()
        self.hub = StreamHub(
            settings.ws_max_connections,
            settings.ws_max_message_bytes,
            settings.ws_send_timeout_seconds,
        )
        self.collector = FramepoolCollector(
            self.current, self.alerts.active, scaling=self.scaling.report
        )
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started

    def current(self) -> ClusterSnapshot:
        self.demand_at = time.monotonic()
        if self.snapshot is None:
            self.refresh()
        assert self.snapshot is not None
        return self.snapshot

    def refresh(self) -> list[Alert]:
        """Read Redis, evaluate the alert rules; the alerts that fired or resolved."""
        with self._refreshing:  # the poller's thread, or a first request's
            snap = self.reader.read()
            changed = self.alerts.evaluate(snap)
            self.previous, self.snapshot = self.snapshot, snap
            self.rates.update(snap)
            self.scaling.update(snap)
            self.redis_ok = True
            self.polls += 1
            return changed

    def poll_delay(self) -> float:
        """``MONITOR_POLL_INTERVAL_SECONDS`` while someone looks (a WebSocket client, or an
        API or /metrics read within the last two polls), else the idle interval: a
        monitor nobody watches need not parse every heartbeat the second it changes."""
        fast = self.settings.monitor_poll_interval_seconds
        idle = max(fast, self.settings.monitor_idle_poll_interval_seconds)
        watched = self.hub.clients or time.monotonic() - self.demand_at < 2 * fast
        return fast if watched else idle

    async def poll_forever(self) -> None:
        delay = self.settings.monitor_poll_interval_seconds
        failures = 0
        while True:
            try:
                changed = await asyncio.to_thread(self.refresh)
            except redis.RedisError as exc:
                failures += 1
                self.redis_ok = False
                if failures == 1 or failures % 30 == 0:
                    log.warning("monitor_redis_unavailable", error=str(exc), failures=failures)
                await asyncio.sleep(min(10.0, delay * 2 ** min(failures, 4)))
                continue
            except Exception:
                log.exception("monitor_poll_failed")
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("monitor_redis_recovered", after_failures=failures)
            failures = 0
            self.hub.publish(self._message_builder(changed))
            # sleep in steps of the fast interval, so a client that comes is served at once
            waited = 0.0
            while waited < self.poll_delay():
                await asyncio.sleep(delay)
                waited += delay

    def _message_builder(self, changed: list[Alert]) -> Callable[[], dict[str, Any]]:
        """What builds this poll's WebSocket message (only if some client wants it)."""
        snap = self.snapshot
        assert snap is not None
        changed_dicts = [a.to_dict() for a in changed]

        def build() -> dict[str, Any]:
            active = [a.to_dict() for a in self.alerts.active()]
            return views.stream_message(snap, self.rates, changed_dicts, active)

        return build

    def metrics(self) -> bytes:
        """/metrics: the latest snapshot's exposition (written once per snapshot and alerts)."""
        self.current()
        return self.collector.text()


def create_app(
    settings: Settings,
    reader: ClusterReader | None = None,
    alerts: AlertEngine | None = None,
    poll: bool = True,
) -> FastAPI:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    state = MonitorState(
        settings,
        reader or ClusterReader(client, settings),
        alerts or AlertEngine(client, settings),
    )
    limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(state.poll_forever()) if poll else None
        log.info("monitor_started", port=settings.monitor_port, token=bool(settings.api_token))
        yield
        if task is not None:
            task.cancel()

    app = FastAPI(
        title="framepool monitor",
        description="Per-worker GPU, model and queue metrics for a framepool cluster.",
        lifespan=lifespan,
    )
    app.state.monitor = state

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if needs_token(settings, path) and not token_ok(
            settings, presented_token(request.headers, request.query_params)
        ):
            return JSONResponse(
                {
                    "error": "unauthorized",
                    "message": "missing or wrong API token (Bearer or ?token=)",
                },
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if path.startswith("/api/"):
            client_key = request.client.host if request.client else "?"
            allowed, retry = limiter.allow(client_key)
            if not allowed:
                return JSONResponse(
                    {"error": "rate_limited", "message": "too many requests; slow down"},
                    status_code=429,
                    headers={"Retry-After": str(max(1, round(retry)))},
                )
        return await call_next(request)

    def snap() -> ClusterSnapshot:
        try:
            return state.current()
        except redis.RedisError as exc:
            raise _Unavailable(str(exc)) from exc

    @app.exception_handler(Exception)
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, _Unavailable):
            return JSONResponse({"error": "redis_unavailable", "message": str(exc)}, 503)
        log.exception("monitor_request_failed")
        return JSONResponse({"error": "internal", "message": type(exc).__name__}, 500)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        try:
            body = state.metrics()
        except redis.RedisError as exc:
            raise _Unavailable(str(exc)) from exc
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    def health(verbose: bool = False) -> JSONResponse:
        body, code = views.health(snap(), settings.runtime_id, verbose)
        return JSONResponse(body, code)

    @app.get("/ready")
    def ready() -> JSONResponse:
        ok = state.redis_ok and state.snapshot is not None
        return JSONResponse({"ready": ok, "redis": state.redis_ok}, 200 if ok else 503)

    @app.get("/api/v1/gpu/status")
    def gpu_status() -> dict[str, Any]:
        return views.gpu_status(snap(), state.uptime_s)

    @app.get("/api/v1/gpu/kernels")
    def gpu_kernels(
        sort_by: Literal["avg_time", "total_time", "calls"] = "total_time",
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        min_calls: Annotated[int, Query(ge=0)] = 0,
        worker: str | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        s = snap()
        rows = [k for k in s.kernels(worker=worker, model=model) if k["total_calls"] >= min_calls]
        key = {"avg_time": "avg_time_ms", "total_time": "total_time_ms", "calls": "total_calls"}[
            sort_by
        ]
        rows.sort(key=lambda k: k[key], reverse=True)
        return {
            "timestamp": views.iso(s.taken_at),
            "kernels": rows[:limit],
            "total_kernels": len(rows),
        }

    @app.get("/api/v1/gpu/alerts")
    def gpu_alerts(
        severity: Literal["warning", "critical", "all"] = "all",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        snap()
        history = state.alerts.history(limit, None if severity == "all" else severity)
        return {
            "timestamp": views.iso(),
            "alerts": [a.to_dict() for a in history],
            "active_alerts": len(state.alerts.active()),
            "total_alerts_today": state.alerts.count_today(),
        }

    @app.get("/api/v1/gpu/report")
    def gpu_report() -> dict[str, Any]:
        active = [a.to_dict() for a in state.alerts.active()]
        return views.report(snap(), state.uptime_s, active)

    @app.get("/api/v1/workers")
    def workers() -> dict[str, Any]:
        return views.workers_list(snap())

    @app.get("/api/v1/queues")
    def queues() -> dict[str, Any]:
        s = snap()
        return {
            "timestamp": views.iso(s.taken_at),
            "queues": [
                {
                    "model_id": q.model_id,
                    "queue": q.queue,
                    "depth": q.depth,
                    "oldest_age_s": q.oldest_age_s,
                    "dropped": q.dropped,
                }
                for q in s.queues.values()
            ],
        }

    @app.get("/api/v1/models")
    def models() -> dict[str, Any]:
        s = snap()
        return {
            "timestamp": views.iso(s.taken_at),
            "models": [
                {
                    "model_id": m.model_id,
                    "versions": m.versions,
                    "workers": m.states,
                    **views.model_rates(m, state.rates),
                }
                for m in s.models.values()
            ],
        }

    @app.get("/api/v1/scaling")
    def scaling() -> dict[str, Any]:
        """Recommended workers per model, for an operator or an autoscaler.

        Over the last ``SCALING_WINDOW_SECONDS`` (docs/scaling.md):

        - arrival rate λ (frames/s entering the queue) = frames completed/s (workers'
          heartbeat counters) + change of the queue depth/s;
        - service rate μ of one worker (frames/s it completes when busy): measured over a
          window in which the queue never emptied, else estimated from model time;
        - backlog B = queue depth when the oldest frame is older than
          ``SCALING_TARGET_QUEUE_AGE_SECONDS``, else 0;
        - ``recommended_workers = ceil((λ + B / SCALING_DRAIN_SECONDS) / (μ ×
          SCALING_TARGET_UTILIZATION))``; 0 when nothing arrives or waits, at least 1
          otherwise, the current count while λ or μ is unknown.

        Also exported as ``framepool_recommended_workers{model_id}`` beside
        ``framepool_model_workers{model_id}`` (workers consuming the model's queue).
        """
        s = snap()
        p = state.scaling.policy
        return {
            "timestamp": views.iso(s.taken_at),
            "policy": {
                "window_s": p.window_s,
                "target_utilization": p.target_utilization,
                "target_queue_age_s": p.target_queue_age_s,
                "drain_s": p.drain_s,
            },
            "models": state.scaling.report(s),
        }

    @app.websocket("/api/v1/gpu/stream")
    async def stream(ws: WebSocket) -> None:
        if not token_ok(settings, presented_token(ws.headers, ws.query_params)):
            await ws.close(code=1008, reason="missing or wrong API token")
            return
        await state.hub.serve(ws)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _Unavailable(Exception):
    """Redis could not be read for this request."""
