"""Reading framepool's Celery queues from Redis: depth, oldest frame, drops.

A model's frames wait in ``keys.queue_lists(model_id)`` (the queue and its
priority sub-lists). kombu LPUSHes and BRPOPs, so the oldest message of a list
is at index -1. A message is kombu's JSON envelope::

    {"body": base64(msgpack([args, kwargs, embed])), "content-type": "application/x-msgpack",
     "properties": {"body_encoding": "base64", ...}, "headers": {...}}

with ``args = [frame_bytes, meta]`` and ``meta["enqueued_at"]`` (epoch seconds)
stamped by the producer. :func:`enqueued_at` returns ``None`` for anything else
and never raises. The oldest message of a busy queue is a new one at every read,
~100 KB with its frame, so for a message in exactly that shape (kombu's envelope
with the body first, a binary frame) it decodes only the body's first bytes and
the base64 after the frame (~0.05 ms instead of ~0.35). :func:`add_queue_commands`
queues the commands for one model on a pipeline and :func:`parse_queue_replies`
reads their replies, so the reader can fetch every model's queues in one round
trip; given a ``memo``, it does not decode a list's oldest message again while
that is still the oldest.
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


#: list name -> (its oldest message, that message's enqueued_at)
StampMemo = dict[str, tuple[Any, float | None]]


def parse_queue_replies(
    model_id: str, replies: list[Any], memo: StampMemo | None = None
) -> QueueReading:
    """Turn the replies of :func:`add_queue_commands` (errors in place) into a reading."""
    lists = keys.queue_lists(model_id)
    n = len(lists)
    lengths = [r if isinstance(r, int) and r > 0 else 0 for r in replies[:n]]
    stamps = [_stamp(name, raw, memo) for name, raw in zip(lists, replies[n : 2 * n], strict=False)]
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


def _stamp(name: str, raw: Any, memo: StampMemo | None) -> float | None:
    if not raw:
        return None  # an empty list (or an error)
    if memo is None:
        return enqueued_at(raw)
    seen = memo.get(name)
    if seen is not None and seen[0] == raw:
        return seen[1]
    stamp = enqueued_at(raw)
    memo[name] = (raw, stamp)
    return stamp


_BODY_FIRST = b'{"body": "'
_BIN_HEADERS = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin8/16/32: bytes of length


def _quick_meta(raw: bytes) -> Any:
    """``args[1]`` of a protocol 2 msgpack message whose ``args[0]`` is binary, decoding
    only the base64 around the frame; ``None`` when ``raw`` is not in that shape."""
    end = raw.find(b'"', len(_BODY_FIRST)) if raw.startswith(_BODY_FIRST) else -1
    body = raw[len(_BODY_FIRST) : end]
    if end < 0 or b"\\" in body:
        return None
    rest = json.loads(raw[: len(_BODY_FIRST)] + raw[end:])  # the envelope, its body ""
    props = rest.get("properties") if isinstance(rest, dict) else None
    if not isinstance(props, dict) or props.get("body_encoding") != "base64":
        return None
    if rest.get("body") != "" or "msgpack" not in str(rest.get("content-type") or ""):
        return None
    head = base64.b64decode(body[:12], validate=True)
    # [args, kwargs, embed]; args = [frame (bin), meta, ...]
    size_bytes = _BIN_HEADERS.get(head[2]) if len(head) == 9 else None
    if head[0] != 0x93 or not 0x92 <= head[1] <= 0x9F or size_bytes is None:
        return None
    offset = 3 + size_bytes + int.from_bytes(head[3 : 3 + size_bytes], "big")
    tail = base64.b64decode(body[offset // 3 * 4 :], validate=True)[offset % 3 :]
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(tail)
    return next(unpacker)


def enqueued_at(raw: Any) -> float | None:
    """``meta["enqueued_at"]`` of a raw kombu message, or ``None`` if it is not one."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        meta = _quick_meta(raw) if isinstance(raw, bytes) else None
        if isinstance(meta, dict) and (stamp := _valid_stamp(meta.get("enqueued_at"))) is not None:
            return stamp
    except Exception:  # not in the quick path's shape: read it whole
        pass
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
    return _valid_stamp(args[1].get("enqueued_at"))


def _valid_stamp(stamp: Any) -> float | None:
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
