"""``framepool gateway``: the HTTP ingest gateway (port ``SERVER_PORT``, 8000).

- ``POST /inference``: the reference runtime's JSON (``model_id``,
  ``frame_base64``, optional ``camera_id``, ``seq``, ``captured_at``,
  ``deadline_ms``, ``correlation_id``/``request_id``, ``callback_url``); waits
  for the result and returns it (``InferenceResult`` fields plus ``request_id``).
- ``POST /v1/frames/{model_id}``: a raw JPEG/PNG body (fields as query
  parameters); 202 ``{job_id, correlation_id, ...}``, or with ``?wait=true``
  the result.
- ``GET /v1/jobs/{job_id}``: the result, ``{"status": "pending", ...}``, or 404.
- ``GET /capabilities``: models served right now (live worker heartbeats) and
  their manifests; ``GET /health`` (``?verbose=true``); ``GET /metrics``.

A result, whatever its ``status`` (``ok``, ``error``, ``expired``), is a 200:
the request was served and the body says how the frame fared. Refusals are 4xx
and 5xx with ``{"error", "message"}`` bodies (:mod:`producer.gateway_errors`,
:mod:`producer.gateway_frames`). ``X-Request-ID`` is the correlation id and is
echoed on every answer (:mod:`producer.gateway_edge`).

Enqueueing and waiting block (Redis, Celery's result backend), so the routes run
them on a thread pool of :data:`BLOCKING_THREADS` threads, not on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import redis
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from framepool import correlation
from framepool.log import get_logger
from framepool.manifest import discover
from framepool.settings import Settings
from producer.client import FrameProducer
from producer.frame_handle import FrameHandle
from producer.gateway_cluster import ClusterCache, capabilities, health
from producer.gateway_edge import GatewayEdge, GatewayMetrics
from producer.gateway_errors import install_handlers, unavailable
from producer.gateway_frames import (
    InferenceRequest,
    check_frame,
    decode_base64,
    json_body_limit,
    parse_inference,
    read_body,
)
from producer.gateway_jobs import GatewayJobs

log = get_logger(__name__)

T = TypeVar("T")

#: Threads that may block at once on Redis or a result (each waiting request holds one).
BLOCKING_THREADS = 256
DEFAULT_WAIT_S = 30.0
MAX_WAIT_S = 600.0

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": InferenceRequest.model_json_schema()}},
    }
}

Timeout = Annotated[float, Query(gt=0, le=MAX_WAIT_S, description="seconds to wait for the result")]


def create_gateway(settings: Settings, producer: FrameProducer | None = None) -> FastAPI:
    """The gateway app; it closes ``producer`` on shutdown only when it made it."""
    owned = producer is None
    fp = producer if producer is not None else FrameProducer(settings)
    metrics = GatewayMetrics()
    jobs = GatewayJobs(settings, fp, metrics)
    cluster = ClusterCache(fp.redis)
    limiter = anyio.CapacityLimiter(BLOCKING_THREADS)
    started = time.monotonic()
    body_limit = json_body_limit(settings.max_frame_bytes)

    async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=limiter)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info(
            "gateway_started",
            port=settings.server_port,
            auth=bool(settings.api_token),
            max_frame_bytes=settings.max_frame_bytes,
        )
        await jobs.results.start()
        yield
        await jobs.results.close()
        if owned:
            fp.close()

    app = FastAPI(
        title="framepool gateway",
        description="Send camera frames to framepool's GPU workers and get results back.",
        lifespan=lifespan,
    )
    install_handlers(app)
    app.add_middleware(GatewayEdge, settings=settings, metrics=metrics)
    app.state.jobs = jobs

    def correlation_for(request: Request, *body_ids: str | None) -> str:
        """X-Request-ID when given, else the body's id, else the one generated for the call."""
        if not request.state.correlation_id_given:
            given = next((i for i in body_ids if i), None)
            if given is not None:
                request.state.correlation_id = correlation.normalize(given)
        return str(request.state.correlation_id)

    def checked_frame(data: bytes, began: float) -> None:
        try:
            check_frame(data, settings)
        finally:
            metrics.observe_frame(len(data), time.perf_counter() - began)

    def enqueue_inference(request: Request, body: bytes) -> FrameHandle:
        req = parse_inference(body)
        cid = correlation_for(request, req.correlation_id, req.request_id)
        began = time.perf_counter()
        frame = decode_base64(req.frame_base64, settings.max_frame_bytes)
        checked_frame(frame, began)
        handle = jobs.enqueue(
            req.model_id,
            frame,
            correlation_id=cid,
            camera_id=req.camera_id,
            seq=req.seq,
            captured_at=req.captured_at,
            deadline_ms=req.deadline_ms,
            callback_url=req.callback_url,
            latest_wins=req.latest_wins,
        )
        return handle

    @app.post("/inference", openapi_extra=_JSON_BODY, tags=["frames"])
    async def inference(request: Request, timeout: Timeout = DEFAULT_WAIT_S) -> JSONResponse:
        """Run one base64 frame through a model and return the result (the reference API)."""
        body = await read_body(request, body_limit, "body")
        handle = await blocking(enqueue_inference, request, body)
        result = await jobs.wait(handle, timeout)
        return JSONResponse({**result.model_dump(mode="json"), "request_id": result.correlation_id})

    @app.post("/v1/frames/{model_id}", openapi_extra=_IMAGE_BODY, tags=["frames"])
    async def frames(
        request: Request,
        model_id: str,
        camera_id: str | None = None,
        seq: Annotated[int | None, Query(ge=0)] = None,
        captured_at: float | None = None,
        deadline_ms: Annotated[float | None, Query(gt=0)] = None,
        callback_url: str | None = None,
        latest_wins: bool | None = None,
        wait: bool = False,
        timeout: Timeout = DEFAULT_WAIT_S,
    ) -> JSONResponse:
        """Enqueue a raw JPEG/PNG body: 202 with the job id, or the result with ``?wait=true``."""
        body = await read_body(request, settings.max_frame_bytes, "frame")
        checked_frame(body, time.perf_counter())  # header only: microseconds, no thread hop
        fields = {
            "camera_id": camera_id,
            "seq": seq,
            "captured_at": captured_at,
            "deadline_ms": deadline_ms,
            "callback_url": callback_url,
            "latest_wins": latest_wins,
        }
        cid = correlation_for(request)
        handle = await blocking(jobs.enqueue, model_id, body, correlation_id=cid, **fields)
        if wait:
            result = await jobs.wait(handle, timeout)
            return JSONResponse(result.model_dump(mode="json"))
        url = f"/v1/jobs/{handle.job_id}"
        return JSONResponse(
            {
                "job_id": handle.job_id,
                "correlation_id": handle.correlation_id,
                "model_id": model_id,
                "status": "queued",
                "status_url": url,
            },
            202,
            headers={"Location": url},
        )

    @app.get("/v1/jobs/{job_id}", tags=["frames"])
    async def job(job_id: str) -> JSONResponse:
        """A job's result, ``{"status": "pending"}`` while it waits, 404 when unknown."""
        return JSONResponse(await blocking(jobs.job, job_id))

    @app.get("/capabilities", tags=["service"])
    async def capabilities_route() -> JSONResponse:
        """The models served right now (live worker heartbeats) with their manifests."""
        view = await blocking(cluster.read)
        manifests = (await blocking(discover, settings.models_root))[0]
        return JSONResponse(capabilities(view, manifests, settings))

    @app.get("/health", tags=["service"])
    async def health_route(verbose: bool = False) -> JSONResponse:
        """200 while Redis answers (``healthy`` or ``degraded``); 503 when it does not."""
        try:
            view = await blocking(cluster.read)
        except redis.RedisError as exc:
            error = unavailable(f"Redis unreachable: {exc}")
            body = {
                "status": "unhealthy",
                "runtime_id": settings.runtime_id,
                "redis": "unavailable",
                **error.body(),
            }
            return JSONResponse(body, 503, headers=error.headers)
        body = health(view, settings, verbose)
        if verbose:
            body["uptime_s"] = round(time.monotonic() - started, 3)
            body["queues"] = await blocking(
                lambda: {m: fp.queue_depth(m) for m in sorted(view.models)}
            )
        return JSONResponse(body)

    @app.get("/metrics", tags=["service"])
    def metrics_route() -> Response:
        """Prometheus text: frame sizes, decode time, requests by route and status."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
