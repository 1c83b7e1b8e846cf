"""Correlation and job ids: generated or given at submit, carried in the Celery
message header ``correlation_id``, bound into every log line of that frame."""

from __future__ import annotations

import re
import uuid

from framepool.errors import BadInput

HEADER = "correlation_id"
_ALLOWED = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def new_id() -> str:
    return uuid.uuid4().hex


def normalize(correlation_id: str | None) -> str:
    """Return a usable correlation id: the given one if well-formed, else a new one.

    A caller-supplied id that is not a short printable token is refused rather
    than passed into logs and headers.
    """
    if correlation_id is None or correlation_id == "":
        return new_id()
    if not isinstance(correlation_id, str) or not _ALLOWED.match(correlation_id):
        raise BadInput("correlation_id must be 1-128 characters of letters, digits and ._:@/+=-")
    return correlation_id
