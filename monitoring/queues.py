"""Reading framepool's Celery queues from Redis: depth, oldest frame, drops.

A model's frames wait in ``keys.queue_lists(model_id)`` (the queue and its
priority sub-lists). kombu LPUSHes and BRPOPs, so the oldest message of a list
is at index -1. A message is kombu's JSON envelope::

    {"body": base64(msgpack([args, kwargs, embed])), "content-type": "application/x-msgpack",
     "properties": {"body_encoding": "base64", ...}, "headers": {...}}

with ``args = [frame_bytes, meta]`` and ``meta["enqueued_at"]`` (epoch seconds)
stamped by the producer. :func:`enqueued_at` returns ``None`` for anything else
and never raises. :func:`add_queue_commands` queues the commands for one model on
a pipeline and :func:`parse_queue_replies` reads their replies, so the reader
can fetch every model's queues in one round trip.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

import msgpack

from framepool import keys


@dataclass
class QueueReading:
    """What Redis says about one model's queues (before the reader adds ages)."""

    depth: int
    oldest_enqueued_at: float | None
    dropped: dict[str, int]


def commands_per_model(model_id: str) -> int:
    """How many replies :func:`add_queue_commands` adds for ``model_id``."""
    return 2 * len(keys.queue_lists(model_id)) + 1


def add_queue_commands(pipe: Any, model_id: str) -> None:
    """LLEN and LINDEX -1 of each list (LINDEX of an empty list costs nothing), HGETALL drops."""
    lists = keys.queue_lists(model_id)
    for name in lists:
        pipe.llen(name)
    for name in lists:
        pipe.lindex(name, -1)
    pipe.hgetall(keys.dropped_counter(model_id))


def parse_queue_replies(model_id: str, replies: list[Any]) -> QueueReading:
    """Turn the replies of :func:`add_queue_commands` (errors in place) into a reading."""
    n = len(keys.queue_lists(model_id))
    lengths = [r if isinstance(r, int) and r > 0 else 0 for r in replies[:n]]
    stamps = [enqueued_at(raw) for raw, length in zip(replies[n : 2 * n], lengths, strict=False)]
    seen = [s for s, length in zip(stamps, lengths, strict=False) if length and s is not None]
    return QueueReading(
        depth=sum(lengths),
        oldest_enqueued_at=min(seen) if seen else None,
        dropped=_dropped(replies[2 * n] if len(replies) > 2 * n else None),
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _dropped(reply: Any) -> dict[str, int]:
    if not isinstance(reply, dict):
        return {}
    out: dict[str, int] = {}
    for reason, count in reply.items():
        try:
            out[_text(reason)] = int(count)
        except (TypeError, ValueError):
            continue
    return out


def enqueued_at(raw: Any) -> float | None:
    """``meta["enqueued_at"]`` of a raw kombu message, or ``None`` if it is not one."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        envelope = json.loads(raw)
        if not isinstance(envelope, dict):
            return None
        payload = _decode_body(envelope)
    except Exception:  # any garbage in a list is "not a framepool message"
        return None
    args: Any = None
    if isinstance(payload, list | tuple) and payload:
        args = payload[0]  # protocol 2: [args, kwargs, embed]
    elif isinstance(payload, dict):
        args = payload.get("args")  # protocol 1: {"task": ..., "args": ...}
    if not isinstance(args, list | tuple) or len(args) < 2 or not isinstance(args[1], dict):
        return None
    stamp = args[1].get("enqueued_at")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        return None
    return float(stamp)


def _decode_body(envelope: dict[str, Any]) -> Any:
    body = envelope.get("body")
    props = envelope.get("properties")
    encoding = props.get("body_encoding") if isinstance(props, dict) else "base64"
    if isinstance(body, str):
        data = base64.b64decode(body, validate=True) if encoding == "base64" else body.encode()
    else:
        return None
    content_type = str(envelope.get("content-type") or "")
    if "json" in content_type:
        return json.loads(data)
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
