"""The ``framepool.infer`` messages of a list of frames: Celery's, at a fraction of the cost.

Celery's ``send_task`` builds each message through its configuration lookups,
its publish signals, kombu's producer pool and its retry wrapper: 0.36 ms per
frame here with the cores warm, 0.75 ms after 50 ms of quiet, on the path of
every frame before it reaches Redis. Two messages of one queue differ only in
the task's id (and its root id, the same), its ``argsrepr``, its correlation id
(a header and a property), kombu's delivery tag and the body (the frame's meta,
and its bytes when not claim-checked). So the first frame for a queue goes
through Celery (captured by the transport, not sent:
``framepool.broker.captured_publishes``), its message is checked and kept, and the
next ones are that message with those fields filled in (0.09 ms, 0.23 after a
quiet gap; docs/benchmarks.md, the `bench peers` verdict of 06:37).

Celery builds the message itself whenever a kept one would not be what it
builds: in a Celery task (the message then names its parent and root), when
something listens to ``before_task_publish`` or ``after_task_publish`` (it
expects them for every message) or ``task_send_sent_event`` asks for a
``task-sent`` event per message, and when its first message for a queue is not
the one its fields and body predict (a Celery that builds them otherwise: then
nothing is kept). ``tests/integration/test_producer_messages.py`` builds the
same frames both ways and compares them field by field.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, signals
from kombu.exceptions import OperationalError
from kombu.serialization import dumps as encode_body
from kombu.utils.json import dumps as encode_json
from kombu.utils.json import loads as decode_json

from framepool import correlation, keys
from framepool.broker import captured_publishes
from framepool.errors import BrokerUnavailable
from framepool.schemas import FrameMeta

#: what Celery's protocol 2 sends as the body's third part for a plain task
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(slots=True)
class Prepared:
    """A frame checked and ready to send (``FrameProducer._prepare``)."""

    data: bytes
    meta: FrameMeta
    job_id: str
    correlation_id: str
    argsrepr: str


class FrameMessages:
    """Each frame's message and the Redis list kombu would push it to (module doc)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._kept: dict[str, tuple[str, dict[str, Any]]] = {}  # queue -> (list, message)

    def build(self, items: Sequence[Prepared], claim: bool) -> list[tuple[str, bytes]]:
        """``items``' messages, in order; each frame's ``enqueued_at`` (and its deadline
        with it) stamped as its message is built, so in list order. The first frame
        for a queue with no kept message goes through Celery on its own, and the
        next ones in ``items`` are filled in from the message it left (each goes
        through Celery too where that message was not kept)."""
        if not self._celery_not_needed():
            return self.through_celery(items, claim)
        out: list[tuple[str, bytes]] = []
        for item in items:
            template = self._kept.get(keys.queue_name(item.meta["model_id"]))
            if template is None:
                [message] = self.through_celery([item], claim)
                self.keep(item, message, claim)
            else:
                _stamp(item)
                message = fill(template, item, claim)
            out.append(message)
        return out

    def through_celery(self, items: Sequence[Prepared], claim: bool) -> list[tuple[str, bytes]]:
        """Each frame's message as Celery and kombu build it, and the list kombu would
        push it to, without sending it (``captured_publishes``)."""
        try:
            with captured_publishes() as sent, self.app.producer_or_acquire() as producer:
                for item in items:
                    _stamp(item)
                    self.app.send_task(
                        keys.INFER_TASK,
                        # claim-checked: no bytes in the message, the worker reads
                        # them from keys.frame_data(job_id)
                        args=(None if claim else item.data, item.meta),
                        task_id=item.job_id,
                        queue=keys.queue_name(item.meta["model_id"]),
                        headers={correlation.HEADER: item.correlation_id},
                        correlation_id=item.correlation_id,
                        argsrepr=item.argsrepr,
                        kwargsrepr="{}",
                        producer=producer,
                        # The worker writes the result itself and FrameHandle waits on
                        # our own listener: Celery's SUBSCRIBE to the task's result
                        # channel (and UNSUBSCRIBE when its AsyncResult goes) would
                        # only cost two round trips per frame.
                        ignore_result=True,
                        # The anonymous direct exchange LPUSHes onto the queue's list:
                        # nothing to declare, so kombu's per-publish check is skipped.
                        declare=(),
                    )
        except (redis.RedisError, OSError, OperationalError) as exc:  # kombu's channel pings
            raise BrokerUnavailable.from_redis(exc, "cannot enqueue") from exc
        if len(sent) != len(items):
            raise RuntimeError(
                f"{len(sent)} of {len(items)} messages reached framepool's transport: "
                "FrameProducer needs broker_transport = framepool.broker:Transport"
            )
        return sent

    def keep(self, item: Prepared, message: tuple[str, bytes], claim: bool) -> bool:
        """Keep Celery's ``message`` of ``item`` as its queue's template when filling the
        template in with ``item`` gives that same message back (bar kombu's delivery
        tag, new for each message); True when kept."""
        queue_list, raw = message
        try:
            parsed = decode_json(raw)
            again = decode_json(fill((queue_list, parsed), item, claim)[1])
            same = (
                parsed["content-type"] == "application/x-msgpack"
                and parsed["properties"]["body_encoding"] == "base64"
                and _untagged(again) == _untagged(parsed)
            )
        except (KeyError, TypeError, ValueError):
            same = False
        if same:
            self._kept[keys.queue_name(item.meta["model_id"])] = (queue_list, parsed)
        return same

    def _celery_not_needed(self) -> bool:
        """No Celery task calls us, nobody listens to the publish signals, and no
        ``task-sent`` event is asked for (``task_send_sent_event``)."""
        return (
            self.app.current_worker_task is None
            and not signals.before_task_publish.receivers
            and not signals.after_task_publish.receivers
            and not self.app.conf.task_send_sent_event
        )


def fill(template: tuple[str, dict[str, Any]], item: Prepared, claim: bool) -> tuple[str, bytes]:
    """``template``'s message for ``item``: its ids, ``argsrepr``, a new delivery tag
    and its body, the rest as Celery wrote it."""
    queue_list, tmpl = template
    headers = {
        **tmpl["headers"],
        "id": item.job_id,
        "root_id": item.job_id,
        "argsrepr": item.argsrepr,
        correlation.HEADER: item.correlation_id,
    }
    props = {
        **tmpl["properties"],
        "correlation_id": item.correlation_id,
        "delivery_tag": str(uuid.uuid4()),
    }
    if "argsrepr" in props:  # Celery sets it as a property too
        props["argsrepr"] = item.argsrepr
    _type, _enc, body = encode_body(
        ((None if claim else item.data, item.meta), {}, EMBED), serializer="msgpack"
    )
    message = {**tmpl, "headers": headers, "properties": props,
               "body": base64.b64encode(body).decode()}  # fmt: skip
    return queue_list, encode_json(message).encode()


def _stamp(item: Prepared) -> None:
    """The deadline counts from here, as the frame's time in the queue does."""
    now = time.time()
    if item.meta["deadline_at"] is not None:
        item.meta["deadline_at"] += now - item.meta["enqueued_at"]
    item.meta["enqueued_at"] = now


def _untagged(message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "properties": {**message["properties"], "delivery_tag": None}}
