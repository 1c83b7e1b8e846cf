"""Maps framepool's Settings to Celery's configuration keys, and nothing more."""

from __future__ import annotations

from typing import Any

from framepool.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        "visibility_timeout": settings.visibility_timeout_seconds,
        "unacked_restore_interval": 30,
        "socket_keepalive": True,
        "health_check_interval": 15,
    }
    return {
        "broker_url": settings.redis_url,
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
