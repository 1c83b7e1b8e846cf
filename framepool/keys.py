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
