"""producer.messages: the messages built from a kept one are the ones Celery builds, and
Celery builds them itself wherever a kept one would not be its own."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from celery import signals

from framepool import keys
from framepool.settings import Settings
from producer import FrameProducer
from producer.messages import FrameMessages, fill
from tests.unit.test_codec import jpeg

MODEL = "shape_detector"
QUEUE = keys.queue_name(MODEL)

FRAMES: list[dict[str, Any]] = [
    {},
    {"camera_id": "cam-7", "seq": 41},
    {"camera_id": "cam-8", "seq": 0, "correlation_id": "req-1", "deadline_ms": 250.0},
    {"callback_url": "http://127.0.0.1:9/hook", "captured_at": 1795500000.25},
]


class Counted(FrameMessages):
    """Counts the frames Celery builds."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.by_celery = 0

    def through_celery(self, items: Any, claim: bool) -> list[tuple[str, bytes]]:
        self.by_celery += len(items)
        return super().through_celery(items, claim)


def _untagged(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    tag = message["properties"].pop("delivery_tag")
    uuid.UUID(tag)  # kombu's: a UUID
    return message


@pytest.mark.parametrize("claim", [True, False], ids=["claim-check", "inline"])
def test_a_kept_message_filled_in_is_the_one_celery_builds(settings: Settings, claim: bool) -> None:
    data = jpeg(64, 48)
    with FrameProducer(settings) as p:
        builder = Counted(p.app)
        builder.build([p._prepare(MODEL, data)], claim)
        assert QUEUE in builder._kept and builder.by_celery == 1
        for extra in FRAMES:
            item = p._prepare(MODEL, data, **extra)
            [(celery_list, by_celery)] = builder.through_celery([item], claim)
            ours_list, ours = fill(builder._kept[QUEUE], item, claim)  # the same meta
            assert ours_list == celery_list
            assert _untagged(ours) == _untagged(by_celery)
            assert json.loads(ours)["properties"]["delivery_tag"] != json.loads(by_celery)[
                "properties"]["delivery_tag"]  # fmt: skip
        before = builder.by_celery
        messages = builder.build([p._prepare(MODEL, data, **e) for e in FRAMES], claim)
        assert builder.by_celery == before  # all four from the kept message
        ids = [json.loads(raw)["headers"]["id"] for _, raw in messages]
        assert len(set(ids)) == 4


def test_frames_sent_from_kept_messages_are_queued_as_celerys(settings: Settings) -> None:
    data = jpeg(64, 48)
    with FrameProducer(settings) as p:
        handles = p.submit_many([{"model_id": MODEL, "frame": data, "seq": i} for i in range(3)])
        handles += [p.submit(MODEL, data, camera_id="c", seq=9, correlation_id="req-9")]
    raw = redis.Redis.from_url(settings.redis_url).lrange(QUEUE, 0, -1)
    queued = [json.loads(m) for m in reversed(raw)]
    assert [m["headers"]["id"] for m in queued] == [h.job_id for h in handles]
    assert queued[-1]["properties"]["correlation_id"] == "req-9"
    assert queued[-1]["headers"]["correlation_id"] == "req-9"
    assert len({m["properties"]["delivery_tag"] for m in queued}) == 4


def test_celery_builds_each_message_while_the_publish_signals_are_heard(
    settings: Settings,
) -> None:
    heard: list[str] = []

    def receiver(headers: Any = None, **_: Any) -> None:
        heard.append(headers["id"])

    data = jpeg(64, 48)
    with FrameProducer(settings) as p:
        builder = Counted(p.app)
        builder.build([p._prepare(MODEL, data)], True)  # kept
        signals.before_task_publish.connect(receiver)
        try:
            items = [p._prepare(MODEL, data, seq=i) for i in range(3)]
            builder.build(items, True)
        finally:
            signals.before_task_publish.disconnect(receiver)
        assert heard == [item.job_id for item in items]
        assert builder.by_celery == 4
        builder.build([p._prepare(MODEL, data)], True)
        assert builder.by_celery == 4  # nobody listens any more: the kept message again


def test_a_first_message_unlike_its_prediction_keeps_nothing(settings: Settings) -> None:
    data = jpeg(64, 48)
    with FrameProducer(settings) as p:
        builder = Counted(p.app)
        item = p._prepare(MODEL, data)
        [(queue_list, raw)] = builder.through_celery([item], True)
        for field, value in (("root_id", "a-parent-task"), ("content-type", "application/json")):
            message = json.loads(raw)
            (message["headers"] if field == "root_id" else message)[field] = value
            assert not builder.keep(item, (queue_list, json.dumps(message).encode()), True)
        message = json.loads(raw)
        message["body"] = message["body"][:-4]  # a body other than the meta's encoding
        assert not builder.keep(item, (queue_list, json.dumps(message).encode()), True)
        assert builder._kept == {}
        assert builder.keep(item, (queue_list, raw), True)  # Celery's own is kept
        builder._kept.clear()
        assert not builder.keep(item, (queue_list, b"not json"), True)
        assert builder._kept == {}


def test_celery_builds_each_message_when_task_sent_events_are_on(settings: Settings) -> None:
    data = jpeg(64, 48)
    with FrameProducer(settings) as p:
        builder = Counted(p.app)
        builder.build([p._prepare(MODEL, data)], True)
        p.app.conf.task_send_sent_event = True
        builder.build([p._prepare(MODEL, data) for _ in range(2)], True)
        assert builder.by_celery == 3
        p.app.conf.task_send_sent_event = False
        builder.build([p._prepare(MODEL, data)], True)
        assert builder.by_celery == 3


def test_frames_are_stamped_in_list_order_when_one_queue_has_no_kept_message(
    settings: Settings,
) -> None:
    data = jpeg(64, 48)
    with FrameProducer(settings) as p:
        builder = Counted(p.app)
        builder.build([p._prepare(MODEL, data)], True)  # kept for shape_detector only
        models = [MODEL, "noop", MODEL, "noop", MODEL]
        items = [p._prepare(m, data, seq=i) for i, m in enumerate(models)]
        messages = builder.build(items, True)
        stamps = [item.meta["enqueued_at"] for item in items]
        assert stamps == sorted(stamps)
        assert builder.by_celery == 2  # the first noop frame, and the one kept before
        assert [q for q, _ in messages] == [keys.queue_name(m) for m in models]
        assert [json.loads(raw)["headers"]["id"] for _, raw in messages] == [
            item.job_id for item in items]  # fmt: skip
