"""Webhook delivery of results, off the GPU worker's path.

Two halves:

- :class:`CallbackDispatcher` runs in the frame worker. After each batch it
  publishes one ``framepool.deliver_callback`` task per result that has a
  ``callback_url`` onto the ``framepool.callbacks`` queue, in one pipelined
  publish, and returns: the GPU worker never waits on HTTP. A batch without
  callback URLs costs one list comprehension.
- :func:`register_callback_task` / :func:`run_callbacks_worker` are
  ``framepool callbacks``: a light Celery worker (thread pool, no torch) that
  POSTs each result as JSON. 2xx is delivered; anything else is retried with
  exponential backoff and jitter; after CALLBACK_MAX_RETRIES retries the
  delivery becomes a dead letter (``framepool.deadletters``).

Signing: ``X-Framepool-Signature: sha256=<hex>`` is the HMAC-SHA256, keyed with
CALLBACK_SECRET, of ``f"{timestamp}."`` followed by the exact body bytes, where
``timestamp`` is the ``X-Framepool-Timestamp`` header (Unix seconds of this
attempt). A receiver that checks the signature and refuses old timestamps
cannot be fed a replayed request. Delivery is at least once: the receiver
deduplicates by ``X-Framepool-Job-ID``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import httpx
import redis
from celery import Celery, Task, signals

from framepool import deadletters, keys
from framepool.celery_app import create_app, thread_worker
from framepool.deadletters import Delivery, is_http_url, mask_url
from framepool.log import bind_frame, get_logger
from framepool.settings import Settings
from workers.results import result_json

if TYPE_CHECKING:
    from workers.results import FrameRecord

log = get_logger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"
JOB_HEADER = "X-Framepool-Job-ID"
TIMESTAMP_HEADER = "X-Framepool-Timestamp"
SIGNATURE_HEADER = "X-Framepool-Signature"
ATTEMPT_HEADER = "X-Framepool-Attempt"

#: No retry waits longer than this, whatever the base and the attempt.
BACKOFF_CAP_SECONDS = 300.0
DEFAULT_CONCURRENCY = 16

# Celery logs two INFO lines per task (and one per retry); the task logs its own.
_QUIET = ("celery.worker.strategy", "celery.app.trace")
# httpx logs each request's full URL at INFO (httpcore at DEBUG); the task logs it masked.
_URL_LOGGERS = ("httpx", "httpcore")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``f"{timestamp}."`` + ``body`` keyed with ``secret``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def backoff_delay(
    retries: int,
    base: float,
    cap: float = BACKOFF_CAP_SECONDS,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds before retry ``retries + 1``: ``base * 2**retries`` capped at ``cap``, with
    equal jitter (between half and all of it), so failed receivers are not hit in step."""
    full = min(cap, base * 2.0 ** min(retries, 62))
    return full / 2.0 + rand() * full / 2.0


def encode_body(result: Mapping[str, Any]) -> bytes:
    return result_json(result)


def _user_agent() -> str:
    try:
        return f"framepool-callbacks/{version('framepool')}"
    except PackageNotFoundError:
        return "framepool-callbacks"


# ------------------------------------------------------------- frame worker side
class CallbackDispatcher:
    """Hands results with a ``callback_url`` to the callbacks queue; never blocks on HTTP."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self._settings = settings
        self._app = app  # built on the first callback: no cost for workers without any
        self._lock = threading.Lock()

    def _celery(self) -> Celery:
        with self._lock:
            if self._app is None:
                self._app = create_app(self._settings)
            return self._app

    def dispatch(self, done: list[tuple[FrameRecord, dict[str, Any]]]) -> None:
        deliveries = [
            Delivery(url, result) for rec, result in done if (url := rec.meta.get("callback_url"))
        ]
        if not deliveries:
            return
        try:
            deadletters.send_callbacks(self._celery(), deliveries)
        except Exception as exc:  # the batch's results are stored; never kill the runner
            log.error(
                "callback_enqueue_failed",
                error=f"{type(exc).__name__}: {exc}",
                callbacks=len(deliveries),
                job_ids=[d.result.get("job_id") for d in deliveries],
            )


# ------------------------------------------------------------ callbacks worker side
@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    reason: str  # "HTTP 204", "HTTP 500", "ConnectError: ..."


class Poster:
    """POSTs one result, signed, with the ids in headers; shared by the worker's threads."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = settings.callback_secret.get_secret_value()
        self._clock = clock
        self._user_agent = _user_agent()
        self.http = http or httpx.Client(
            timeout=settings.callback_timeout_seconds,
            follow_redirects=False,  # a 3xx is a failed attempt, not a hop to elsewhere
            trust_env=False,  # proxies and certificates come from Settings, not the env
        )
        if not self._secret:
            log.warning(
                "callback_secret_missing",
                hint="CALLBACK_SECRET is empty: webhooks are sent without X-Framepool-Signature",
            )

    def headers(self, result: Mapping[str, Any], body: bytes, attempt: int) -> dict[str, str]:
        ts = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self._user_agent,
            CORRELATION_HEADER: str(result.get("correlation_id") or ""),
            JOB_HEADER: str(result.get("job_id") or ""),
            TIMESTAMP_HEADER: str(ts),
            ATTEMPT_HEADER: str(attempt),
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, ts, body)
        return headers

    def post(self, url: str, result: Mapping[str, Any], attempt: int) -> Outcome:
        body = encode_body(result)
        try:
            with self.http.stream(
                "POST", url, content=body, headers=self.headers(result, body, attempt)
            ) as resp:
                status = resp.status_code  # the body is not read: a receiver may send anything
        except httpx.HTTPError as exc:
            message = str(exc).replace(url, mask_url(url))[:200]  # never echo URL secrets
            return Outcome(
                False, f"{type(exc).__name__}: {message}" if message else type(exc).__name__
            )
        return Outcome(200 <= status < 300, f"HTTP {status}")

    def close(self) -> None:
        self.http.close()


def _count(client: redis.Redis, field: str) -> None:
    try:
        client.hincrby(keys.CALLBACK_STATS, field, 1)
    except redis.RedisError as exc:
        log.warning("callback_stats_failed", error=str(exc))


def _dead_letter(
    client: redis.Redis,
    settings: Settings,
    url: Any,
    result: Mapping[str, Any],
    reason: str,
    attempts: int,
) -> None:
    entry = deadletters.make_entry(
        "callback",
        reason,
        job_id=result.get("job_id"),
        correlation_id=result.get("correlation_id"),
        model_id=result.get("model_id"),
        camera_id=result.get("camera_id"),
        attempts=attempts,
        url=url if isinstance(url, str) else None,
        payload={"url": url, "result": dict(result)},
    )
    try:
        with client.pipeline(transaction=False) as pipe:
            deadletters.add(pipe, entry, settings.dead_letter_maxlen)
            pipe.hincrby(keys.CALLBACK_STATS, "dead_lettered", 1)
            pipe.execute()
    except redis.RedisError as exc:  # the result itself is still in the result backend
        log.error("callback_dead_letter_failed", error=str(exc))
        return
    log.warning(
        "callback_dead_lettered",
        url=entry["url"],
        reason=reason,
        attempts=attempts,
        dead_letter_id=entry["id"],
    )


def register_callback_task(
    app: Celery, settings: Settings, client: redis.Redis, poster: Poster
) -> Task:
    """Register ``framepool.deliver_callback(url, result)`` on ``app``."""

    # max_retries is the setting: Celery's retry() with max_retries=None takes the
    # task's, 3 by default, and raised MaxRetriesExceededError (the raw URL in its
    # message) before CALLBACK_MAX_RETRIES' last attempts and the dead letter
    @app.task(name=keys.CALLBACK_TASK, bind=True, ignore_result=True, acks_late=True,
              max_retries=settings.callback_max_retries)  # fmt: skip
    def deliver_callback(self: Task, url: Any, result: dict[str, Any]) -> None:
        if not isinstance(result, dict):
            result = {"result": result}
        with bind_frame(
            correlation_id=result.get("correlation_id"),
            job_id=result.get("job_id"),
            camera_id=result.get("camera_id"),
        ):
            if not is_http_url(url):
                _dead_letter(client, settings, url, result, "refused: not an http(s) URL", 0)
                return
            retries = int(self.request.retries or 0)
            outcome = poster.post(url, result, retries + 1)
            if outcome.delivered:
                _count(client, "delivered")
                log.debug("callback_delivered", url=mask_url(url), attempt=retries + 1)
                return
            _count(client, "failed")
            if retries >= settings.callback_max_retries:
                _dead_letter(client, settings, url, result, outcome.reason, retries + 1)
                return
            delay = backoff_delay(retries, settings.callback_backoff_seconds)
            _count(client, "retried")
            log.info(
                "callback_retry",
                url=mask_url(url),
                reason=outcome.reason,
                attempt=retries + 1,
                retry_in_s=round(delay, 3),
            )
            raise self.retry(
                countdown=delay,
                max_retries=settings.callback_max_retries,
                argsrepr=deadletters.callback_repr(url, result),  # else the raw URL shows
                kwargsrepr="{}",
            )

    return deliver_callback


def run_callbacks_worker(
    settings: Settings, concurrency: int = DEFAULT_CONCURRENCY, name: str | None = None
) -> int:
    """Consume ``framepool.callbacks`` with a thread pool until stopped. Returns the exit code."""
    name = name or f"callbacks@{socket.gethostname()}"
    if settings.log_level != "DEBUG":
        for logger_name in _QUIET:
            logging.getLogger(logger_name).setLevel(logging.WARNING)
    for logger_name in _URL_LOGGERS:  # they would print callback URLs unmasked
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    poster = Poster(settings)
    app = create_app(settings)
    register_callback_task(app, settings, client, poster)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        log.info(
            "callbacks_ready",
            worker=name,
            queue=keys.CALLBACK_QUEUE,
            concurrency=concurrency,
            max_retries=settings.callback_max_retries,
            signed=bool(settings.callback_secret.get_secret_value()),
        )

    worker = thread_worker(app, name, [keys.CALLBACK_QUEUE], concurrency, settings.log_level)
    try:
        worker.start()
    finally:
        poster.close()
        client.close()
        log.info("callbacks_stopped", worker=name, exitcode=worker.exitcode)
    return int(worker.exitcode or 0)
