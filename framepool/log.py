"""Structured logging: configured once per process, JSON or console.

Every line carries the context bound with :func:`bind_frame` (correlation_id,
camera_id, job_id) through contextvars, and fields named in REDACT_LOG_FIELDS
are redacted before rendering. Celery's and other stdlib loggers go through the
same renderer, so a service writes one format.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from framepool.settings import Settings

REDACTED = "[redacted]"


class Redactor:
    """Processor that hides the values of sensitive fields (case-insensitive)."""

    def __init__(self, fields: Iterable[str]) -> None:
        self.fields = frozenset(f.lower() for f in fields)

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        for key in list(event_dict):
            if key.lower() in self.fields:
                event_dict[key] = REDACTED
        return event_dict


def _processors(settings: Settings) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        Redactor(settings.redact_log_fields),
    ]


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger for this process."""
    renderer: Processor
    if settings.log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    shared = _processors(settings)
    structlog.configure(
        # a call below the level is dropped first, before the timestamp and the rest:
        # a worker's per-frame debug line costs ~8 us of the GIL otherwise
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


@contextmanager
def bind_frame(**ids: Any) -> Iterator[None]:
    """Bind ids (correlation_id, camera_id, job_id ...) to every log line inside."""
    tokens = structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v})
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


class LogTimer:
    """Time a block and log ``<operation>_done`` with ``duration_ms`` (or ``_failed``)."""

    def __init__(self, logger: Any, operation: str, level: str = "info", **fields: Any) -> None:
        self.logger, self.operation, self.level, self.fields = logger, operation, level, fields
        self.duration_ms = 0.0

    def __enter__(self) -> LogTimer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.duration_ms = (time.perf_counter() - self._t0) * 1000.0
        if exc_type is None:
            getattr(self.logger, self.level)(
                f"{self.operation}_done", duration_ms=round(self.duration_ms, 3), **self.fields
            )
        else:
            self.logger.error(
                f"{self.operation}_failed",
                duration_ms=round(self.duration_ms, 3),
                error=f"{exc_type.__name__}: {exc}",
                **self.fields,
            )
