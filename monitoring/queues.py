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
the base64 after the frame (~0.05 ms instead of ~0.35). :class:`QueueReads` puts
the commands for every model on the reader's pipeline and reads their replies, so
the reader can fetch every model's queues in the same round trip as the rest;
given a ``memo``, it does not decode a list's oldest message again while that is
still the oldest.
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


class QueueReads:
    """The queue commands of one read, and what they answered.

    A model's frames wait in its queue list and, only when messages carry a priority,
    in three priority sub-lists; almost always those are empty, and an empty list does
    not exist in Redis. So a read asks ``LLEN`` and ``LINDEX -1`` of each model's queue
    list and of the sub-lists that held frames at the last read (``busy``), ``HGETALL``
    of its drop counter, and one ``EXISTS`` over every other sub-list: 3 commands a
    model instead of 9. Only when that ``EXISTS`` counts some, :meth:`add_idle` asks
    for those sub-lists too (a second round trip, once: they are read directly from
    then on, while they hold frames)."""

    def __init__(self, models: list[str], busy: set[str]) -> None:
        self.models = models
        self.lists = {m: [ls for ls in keys.queue_lists(m) if ls in busy or not _sub(ls)]
                      for m in models}  # fmt: skip
        self.idle = [
            ls for m in models for ls in keys.queue_lists(m) if _sub(ls) and ls not in busy
        ]
        self.lengths: dict[str, Any] = {}
        self.oldest: dict[str, Any] = {}
        self.dropped: dict[str, Any] = {}
        self._idle_count: Any = None

    def add_commands(self, pipe: Any) -> None:
        """LLEN and LINDEX -1 of each list read, HGETALL of the drops, EXISTS of the idle lists."""
        for m in self.models:
            for name in self.lists[m]:
                pipe.llen(name)
                pipe.lindex(name, -1)  # LINDEX of an empty list costs nothing
            pipe.hgetall(keys.dropped_counter(m))
        if self.idle:
            pipe.exists(*self.idle)

    def take(self, replies: list[Any]) -> list[Any]:
        """Note this read's replies from the front of ``replies``; returns the rest."""
        at = 0
        for m in self.models:
            for name in self.lists[m]:
                self.lengths[name], self.oldest[name] = replies[at], replies[at + 1]
                at += 2
            self.dropped[m] = replies[at]
            at += 1
        if self.idle:
            self._idle_count, at = replies[at], at + 1
        return replies[at:]

    def idle_busy(self) -> bool:
        """Whether some idle sub-list holds frames now (an error counts as yes)."""
        return bool(self.idle) and not (isinstance(self._idle_count, int) and self._idle_count == 0)

    def add_idle(self, pipe: Any) -> None:
        for name in self.idle:
            pipe.llen(name)
            pipe.lindex(name, -1)

    def take_idle(self, replies: list[Any]) -> None:
        for i, name in enumerate(self.idle):
            self.lengths[name], self.oldest[name] = replies[2 * i], replies[2 * i + 1]

    def busy(self) -> set[str]:
        """The sub-lists that held frames: the next read asks for them directly."""
        return {name for name, n in self.lengths.items() if _sub(name) and _length(n)}

    def reading(self, model_id: str, memo: StampMemo | None = None) -> QueueReading:
        """The depth, oldest frame and drops of ``model_id`` (a model of this read)."""
        lists = [ls for ls in keys.queue_lists(model_id) if ls in self.lengths]
        lengths = [_length(self.lengths[ls]) for ls in lists]
        stamps = [_stamp(ls, self.oldest[ls], memo) if n else None
                  for ls, n in zip(lists, lengths, strict=True)]  # fmt: skip
        seen = [s for s in stamps if s is not None]
        return QueueReading(
            depth=sum(lengths),
            oldest_enqueued_at=min(seen) if seen else None,
            dropped=_dropped(self.dropped.get(model_id)),
        )


def _sub(name: str) -> bool:
    return keys.PRIORITY_SEP in name


def _length(reply: Any) -> int:
    return reply if isinstance(reply, int) and not isinstance(reply, bool) and reply > 0 else 0


#: list name -> (its oldest message, that message's enqueued_at)
StampMemo = dict[str, tuple[Any, float | None]]


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
