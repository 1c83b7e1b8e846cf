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


def result_order(camera_id: str) -> str:
    """Hash model_id -> highest ``seq`` appended to the camera's stream for that model:
    a result with a lower seq is appended marked ``late``, never inserted."""
    return f"{PREFIX}:results:{camera_id}:order"


def result_done(job_id: str) -> str:
    """Set (NX, RESULT_TTL_SECONDS) by the first result written for ``job_id``: a frame
    executed twice writes its stream entry, counts and webhook once."""
    return f"{PREFIX}:done:{job_id}"


def frame_data(job_id: str) -> str:
    """The frame's encoded bytes while its message waits (claim check, ``FRAME_CLAIM_CHECK``):
    set by the producer with its message, deleted with the frame's result."""
    return f"{PREFIX}:frame:{job_id}"


#: Celery's Redis result backend keeps a task's result under this key (and
#: publishes it on a channel of the same name); workers write it themselves.
CELERY_RESULT_PREFIX = "celery-task-meta-"


def celery_result(job_id: str) -> str:
    return f"{CELERY_RESULT_PREFIX}{job_id}"


def frame_attempts(job_id: str) -> str:
    """How many times a redelivered frame was started alone (a poison frame's count)."""
    return f"{PREFIX}:attempts:{job_id}"


def latest_frame(model_id: str, camera_id: str) -> str:
    """The job id of the newest frame queued for (model, camera) under latest-frame-wins;
    a queued frame with another job id has been superseded."""
    return f"{PREFIX}:latest:{model_id}:{camera_id}"


#: Set of model ids some worker has registered as served (any host).
SERVED_MODELS = f"{PREFIX}:models:served"


def dropped_counter(model_id: str) -> str:
    """Hash of frames dropped for ``model_id`` by reason (queue_full, expired, superseded, ...)."""
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


def worker_kernels(worker: str) -> str:
    """JSON kernel tables of one worker (``KernelTable.top()`` rows per model), rewritten
    only when they change, kept with the heartbeat's TTL; the heartbeat's ``kernels.stamp``
    names the version it holds."""
    return f"{PREFIX}:worker:{worker}:kernels"


def heartbeat_ttl(interval_s: float) -> int:
    """Seconds a heartbeat stays after its last write: three missed beats mean gone."""
    return max(2, int(round(3 * interval_s)))


#: Webhook delivery: one light task per result with a callback_url, on its own queue
#: (consumed by ``framepool callbacks``, never by a GPU worker).
CALLBACK_TASK = "framepool.deliver_callback"
CALLBACK_QUEUE = "framepool.callbacks"

#: Hash of webhook delivery counts (delivered, failed, retried, dead_lettered).
CALLBACK_STATS = f"{PREFIX}:callbacks:stats"

#: Capped list of JSON dead letters (newest first), every kind (callback, frame).
DEAD_LETTERS = f"{PREFIX}:dead-letters"

#: Celery remote-control command: profile the next N batches on one worker.
PROFILE_COMMAND = "framepool_profile"

#: Alerts (written by the monitor): active ones by id, a capped history, a count per day.
ALERTS_ACTIVE = f"{PREFIX}:alerts:active"
ALERTS_HISTORY = f"{PREFIX}:alerts:history"


def alerts_day_counter(day: str) -> str:
    """Number of alerts fired on ``day`` (``YYYY-MM-DD``, UTC)."""
    return f"{PREFIX}:alerts:count:{day}"
