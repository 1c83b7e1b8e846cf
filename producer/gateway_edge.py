"""What every gateway request passes through: request id, API token, metrics.

:class:`GatewayEdge` is a plain ASGI middleware (no body buffering, so frame
routes can stream their bodies under a byte limit):

- the ``X-Request-ID`` header (``REQUEST_ID_HEADER``) becomes the request's
  correlation id (a new one when absent; 400 when malformed), bound into every
  log line and echoed on every response, errors included; an endpoint may
  replace it (``request.state.correlation_id``), e.g. with the JSON body's id;
- ``API_TOKEN``, when set, guards ``/inference`` and ``/v1/*`` (Bearer header or
  ``?token=``); ``/health``, ``/metrics`` and ``/capabilities`` stay open;
- ``gateway_requests_total{route,status}`` and
  ``gateway_request_duration_seconds{route}`` count every answer; ``route`` is
  the route's template (``/v1/jobs/{job_id}``), so ids never become labels.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from framepool import correlation
from framepool.errors import BadInput
from framepool.log import bind_frame, get_logger
from framepool.settings import Settings
from monitoring.auth import presented_token, token_ok
from producer.gateway_errors import ApiError

log = get_logger(__name__)

#: The worker's frame-size buckets (4 KB .. 16 MB), so the two histograms compare.
FRAME_SIZE_BUCKETS = tuple(float(4096 * 2**i) for i in range(13))
DECODE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """The gateway's own registry (not the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frame_size = Histogram(
            "frame_size_bytes",
            "Size of the frames the gateway received (raw or base64-decoded), bytes",
            buckets=FRAME_SIZE_BUCKETS,
            registry=r,
        )
        self.frame_decode = Histogram(
            "frame_decode_duration_seconds",
            "Time the gateway spent decoding base64 and probing a frame's header",
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered by the gateway, by route template and status code",
            ["route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to response, by route template",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Requests being answered now", registry=r
        )
        self.frames = Counter(
            "gateway_frames_enqueued",
            "Frames the gateway put on a model's queue",
            ["model_id"],
            registry=r,
        )

    def observe_frame(self, size: int, seconds: float) -> None:
        self.frame_size.observe(size)
        self.frame_decode.observe(seconds)


def is_guarded(path: str) -> bool:
    return path == "/inference" or path.startswith("/v1/")


def _coarse_route(path: str) -> str:
    """A label for a request no route answered (refused early, or no such path)."""
    if path == "/inference":
        return path
    return "/v1/*" if path.startswith("/v1/") else "unmatched"


class GatewayEdge:
    """ASGI middleware: request id in and out, token check, request metrics."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: GatewayMetrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.header = settings.request_id_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        refusal: ApiError | None = None
        given = headers.get(self.header)
        try:
            cid = correlation.normalize(given)
        except BadInput as exc:
            cid = correlation.new_id()
            refusal = ApiError(400, "invalid_request_id", f"{self.header}: {exc}")
        state["correlation_id"] = cid
        state["correlation_id_given"] = bool(given)
        if refusal is None and is_guarded(scope["path"]):
            query = QueryParams(scope.get("query_string", b""))
            if not token_ok(self.settings, presented_token(headers, query)):
                refusal = ApiError(
                    401,
                    "unauthorized",
                    "missing or wrong API token (Authorization: Bearer <token>, or ?token=)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)[self.header] = state["correlation_id"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            with bind_frame(correlation_id=cid):
                if refusal is not None:
                    await refusal.response()(scope, receive, send_with_id)
                    return
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception as exc:
                    if response_started:
                        raise
                    log.exception("gateway_request_crashed", path=scope["path"])
                    error = ApiError(500, "internal", f"{type(exc).__name__}: {exc}")
                    await error.response()(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or _coarse_route(scope["path"])
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.duration.labels(label).observe(time.perf_counter() - started)
