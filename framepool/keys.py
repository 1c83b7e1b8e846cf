"""Every Redis key, queue name and task name framepool uses, in one place."""

from __future__ import annotations

PREFIX = "framepool"

#: The one Celery task every frame runs as.
INFER_TASK = "framepool.infer"

#: Celery priority sub-lists kombu's Redis transport creates (``queue\x06\x163``).
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_name(model_id: str) -> str:
    """The Redis list (Celery queue) that holds frames for ``model_id``."""
    return f"{INFER_TASK}.{model_id}"


def model_from_queue(queue: str) -> str | None:
    prefix = f"{INFER_TASK}."
    return queue[len(prefix) :] if queue.startswith(prefix) else None


def queue_lists(model_id: str) -> list[str]:
    """Every Redis list that holds queued frames of ``model_id`` (all priorities)."""
    q = queue_name(model_id)
    return [q] + [f"{q}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS if p]


def result_stream(camera_id: str) -> str:
    """Capped stream of results for one camera, in completion order."""
    return f"{PREFIX}:results:{camera_id}"


#: Set of model ids some worker has registered as served (any host).
SERVED_MODELS = f"{PREFIX}:models:served"


def dropped_counter(model_id: str) -> str:
    """Hash of frames dropped for ``model_id`` by reason (queue_full, expired, ...)."""
    return f"{PREFIX}:dropped:{model_id}"


def gateway_job(job_id: str) -> str:
    """JSON of a job the HTTP gateway enqueued (model, camera, seq, correlation id),
    kept for RESULT_TTL_SECONDS: tells a pending job from an unknown one."""
    return f"{PREFIX}:job:{job_id}"


#: Set of worker names that have ever sent a heartbeat (members expire lazily:
#: a name whose heartbeat key is gone is a worker that has stopped or died).
WORKERS = f"{PREFIX}:workers"


def worker_heartbeat(worker: str) -> str:
    """JSON snapshot of one worker, rewritten every HEARTBEAT_INTERVAL_SECONDS with a TTL."""
    return f"{PREFIX}:worker:{worker}"


def heartbeat_ttl(interval_s: float) -> int:
    """Seconds a heartbeat stays after its last write: three missed beats mean gone."""
    return max(2, int(round(3 * interval_s)))


#: Celery remote-control command: profile the next N batches on one worker.
PROFILE_COMMAND = "framepool_profile"

#: Alerts (written by the monitor): active ones by id, a capped history, a count per day.
ALERTS_ACTIVE = f"{PREFIX}:alerts:active"
ALERTS_HISTORY = f"{PREFIX}:alerts:history"


def alerts_day_counter(day: str) -> str:
    """Number of alerts fired on ``day`` (``YYYY-MM-DD``, UTC)."""
    return f"{PREFIX}:alerts:count:{day}"
