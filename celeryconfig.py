"""Maps framepool's Settings to Celery's configuration keys, and nothing more."""

from __future__ import annotations

from typing import Any

from framepool.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    vt = settings.visibility_timeout_seconds
    transport = {
        # An unacked frame (its worker died) is redelivered once it is older than
        # this; a worker warns when a batch runs longer than half of it.
        "visibility_timeout": vt,
        # kombu sweeps every interval x throttle seconds (default 10 x 10): sweep
        # every interval, a quarter of the timeout, so a lost frame waits at most
        # about 1.25 x VISIBILITY_TIMEOUT_SECONDS.
        "unacked_restore_interval": max(1, min(10, vt // 4)),
        "unacked_restore_throttle": 1,
        # the sweep's lock: a worker killed while holding it (kombu's default 300 s)
        # would stall every other worker's sweep that long
        "unacked_mutex_expire": 10,
        "socket_keepalive": True,
        # a Redis that stops answering (not closed: paused, partitioned) must not
        # hang a publish or a consumer forever (kombu's default); BRPOP polls 1 s
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 15,
    }
    return {
        "broker_url": settings.redis_url,
        # kombu's Redis transport with a fix for reconnecting after a Redis restart
        "broker_transport": "framepool.broker:Transport",
        "result_backend": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"health_check_interval": 15},
        "broker_connection_retry_on_startup": True,
        # msgpack carries frames as raw bytes; pickle is never accepted.
        "task_serializer": "msgpack",
        "result_serializer": "msgpack",
        "accept_content": ["msgpack", "json"],
        "result_accept_content": ["msgpack", "json"],
        "event_serializer": "json",
        # at-least-once: ack after the result is stored; requeue if the worker dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "result_expires": settings.result_ttl_seconds,
        # Flower sees every frame task.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_max_retries": None,
    }
