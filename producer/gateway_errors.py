"""The gateway's error answers: one JSON shape, one status code per kind of failure.

Every refusal is ``{"error": <snake_case type>, "message": <what to fix>}`` plus,
where it helps, a few fields (``known`` models, queue ``depth`` and ``limit``,
``job_id``). The mapping from framepool's error tree:

============================  ======  ==========================
``BadFrame`` / ``BadInput``   400     ``bad_frame`` / ``bad_request``
``UnknownModel``              404     ``unknown_model``
``QueueFull``                 429     ``queue_full`` (+ ``Retry-After``)
``BrokerUnavailable``         503     ``redis_unavailable`` (+ ``Retry-After``)
``ResultTimeout``             504     ``result_timeout``
============================  ======  ==========================

The frame checks in :mod:`producer.gateway_frames` raise :class:`ApiError`
directly for what needs a finer code (415 not an image, 413 too large).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from framepool.errors import (
    BadFrame,
    BadInput,
    BrokerUnavailable,
    FramepoolError,
    QueueFull,
    ResultTimeout,
    UnknownModel,
)
from framepool.log import get_logger

log = get_logger(__name__)

#: Seconds a client is told to wait after a full queue or an unreachable Redis.
QUEUE_FULL_RETRY_AFTER_S = 1
REDIS_RETRY_AFTER_S = 5


class ApiError(Exception):
    """An HTTP answer other than success: status, error type, message, extra fields."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, **self.extra}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers)


def from_framepool(exc: FramepoolError, **extra: Any) -> ApiError:
    """The HTTP answer for one of framepool's own errors."""
    if isinstance(exc, UnknownModel):
        return ApiError(404, "unknown_model", str(exc), model_id=exc.model_id, known=exc.known)
    if isinstance(exc, QueueFull):
        return ApiError(
            429,
            "queue_full",
            str(exc),
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
            model_id=exc.model_id,
            depth=exc.depth,
            limit=exc.limit,
            **extra,
        )
    if isinstance(exc, BrokerUnavailable):
        return unavailable(str(exc))
    if isinstance(exc, ResultTimeout):
        return ApiError(504, "result_timeout", str(exc), **extra)
    if isinstance(exc, BadFrame):
        return ApiError(400, "bad_frame", str(exc))
    if isinstance(exc, BadInput):
        return ApiError(400, "bad_request", str(exc))
    return ApiError(500, "internal", f"{type(exc).__name__}: {exc}")


def unavailable(message: str) -> ApiError:
    return ApiError(
        503,
        "redis_unavailable",
        message,
        headers={"Retry-After": str(REDIS_RETRY_AFTER_S)},
    )


def _snake(phrase: str) -> str:
    return "_".join(phrase.lower().replace("-", " ").split()) or "error"


def install_handlers(app: FastAPI) -> None:
    """Make every refusal the gateway sends use the one JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("gateway_request_failed", error=exc.error, message=exc.message)
        else:
            log.info("gateway_request_refused", error=exc.error, message=exc.message)
        return exc.response()

    @app.exception_handler(FramepoolError)
    async def _framepool_error(request: Request, exc: FramepoolError) -> JSONResponse:
        return await _api_error(request, from_framepool(exc))

    @app.exception_handler(redis.RedisError)
    async def _redis_error(request: Request, exc: redis.RedisError) -> JSONResponse:
        return await _api_error(request, unavailable(f"Redis unreachable: {exc}"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse(
            {
                "error": "invalid_request",
                "message": f"{where}: {first['msg']}" if where else first["msg"],
                "details": details,
            },
            422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "error"
        return JSONResponse(
            {"error": _snake(phrase), "message": str(exc.detail)},
            exc.status_code,
            headers=dict(exc.headers or {}),
        )
