"""FrameProducer against a real Redis (no worker): checks before enqueue, limits, wire format."""

from __future__ import annotations

import base64
import json

import msgpack
import numpy as np
import pytest
import redis

from framepool import codec, keys
from framepool.errors import BadFrame, BadInput, QueueFull, UnknownModel
from framepool.settings import Settings
from producer import FrameProducer
from tests.unit.test_codec import jpeg, png_header_only

MODEL = "shape_detector"


def queued(url: str, model_id: str = MODEL) -> list[dict]:
    raw = redis.Redis.from_url(url).lrange(keys.queue_name(model_id), 0, -1)
    return [json.loads(m) for m in reversed(raw)]  # LPUSH + BRPOP: oldest last


@pytest.mark.parametrize("claim_check", [True, False], ids=["claim-check", "inline"])
def test_message_is_msgpack_with_raw_frame_bytes_and_correlation_header(
    settings: Settings, claim_check: bool
) -> None:
    settings = settings.model_copy(update={"frame_claim_check": claim_check})
    data = jpeg(64, 48)
    with FrameProducer(settings) as p:
        h = p.submit(
            MODEL, data, camera_id="cam1", seq=17, correlation_id="req-42", deadline_ms=500
        )
    (msg,) = queued(settings.redis_url)
    assert msg["content-type"] == "application/x-msgpack"
    headers = msg["headers"]
    assert headers["task"] == keys.INFER_TASK and headers["id"] == h.job_id
    assert headers["correlation_id"] == "req-42" == h.correlation_id
    assert msg["properties"]["correlation_id"] == "req-42"
    assert headers["argsrepr"] == (
        "frame<jpeg 1KB 64x48> model=shape_detector cam=cam1 seq=17 cid=req-42"
    )
    args, kwargs, _ = msgpack.unpackb(base64.b64decode(msg["body"]), raw=False)
    frame, meta = args
    client = redis.Redis.from_url(settings.redis_url)
    if claim_check:  # the bytes under their own key, not in the message
        assert frame is None
        assert client.get(keys.frame_data(h.job_id)) == data
        assert 0 < client.ttl(keys.frame_data(h.job_id)) <= settings.frame_ttl_seconds
        assert len(msg["body"]) < 1000
    else:
        assert isinstance(frame, bytes) and frame == data  # msgpack bin, not base64 text
        assert not client.exists(keys.frame_data(h.job_id))
    assert meta["camera_id"] == "cam1" and meta["seq"] == 17
    assert (meta["width"], meta["height"], meta["format"]) == (64, 48, "jpeg")
    assert 0.49 < meta["deadline_at"] - meta["enqueued_at"] < 0.51


def test_submit_many_enqueues_everything_in_order(settings: Settings) -> None:
    frames = [jpeg(32, 32, value=v) for v in range(0, 250, 25)]
    with FrameProducer(settings) as p:
        handles = p.submit_many(
            [
                {"model_id": MODEL, "frame": f, "camera_id": "c", "seq": i}
                for i, f in enumerate(frames)
            ]
        )
        assert p.queue_depth(MODEL) == len(frames)
    ids = [m["headers"]["id"] for m in queued(settings.redis_url)]
    assert ids == [h.job_id for h in handles]
    assert len({h.correlation_id for h in handles}) == len(frames)  # generated, distinct


def test_submit_costs_no_result_subscription(settings: Settings) -> None:
    """Celery's send_task subscribes to each task's result channel (and unsubscribes when
    its AsyncResult goes); framepool's handles wait on their own listener instead."""
    client = redis.Redis.from_url(settings.redis_url)
    with FrameProducer(settings) as p:
        handles = p.submit_many(
            [
                {"model_id": MODEL, "frame": jpeg(32, 32), "camera_id": "c", "seq": i}
                for i in range(3)
            ]
        )
        handles.append(p.submit(MODEL, jpeg(32, 32), camera_id="c", seq=3))
        channels = [f"celery-task-meta-{h.job_id}" for h in handles]
        assert [n for _, n in client.pubsub_numsub(*channels)] == [0, 0, 0, 0]
        assert client.pubsub_channels("celery-task-meta-*") == []
    msgs = queued(settings.redis_url)
    assert [m["headers"]["id"] for m in msgs] == [h.job_id for h in handles]
    assert all(m["headers"]["ignore_result"] is True for m in msgs)  # the worker ignores it too


def test_arrays_are_encoded_as_jpeg_before_enqueue(settings: Settings) -> None:
    with FrameProducer(settings) as p:
        p.submit(MODEL, np.zeros((120, 160, 3), np.uint8))
    (msg,) = queued(settings.redis_url)
    job_id = msg["headers"]["id"]
    frame = redis.Redis.from_url(settings.redis_url).get(keys.frame_data(job_id))
    assert codec.probe(frame, max_bytes=10**6, max_pixels=10**6).width == 160


@pytest.mark.parametrize(
    ("frame", "error", "message"),
    [
        (b"not an image at all", BadFrame, "not a JPEG or PNG"),
        (png_header_only(20000, 20000), BadFrame, "pixel limit"),
        (np.zeros((10, 10), np.uint8), BadFrame, "HxWx3"),
        (np.zeros((10, 10, 3), np.float64), BadFrame, "uint8"),
    ],
)
def test_bad_frames_are_refused_before_enqueue(
    settings: Settings, frame: object, error: type, message: str
) -> None:
    with FrameProducer(settings) as p, pytest.raises(error, match=message):
        p.submit(MODEL, frame)  # type: ignore[arg-type]
    assert queued(settings.redis_url) == []


def test_oversized_payload_is_refused(settings: Settings) -> None:
    small = settings.model_copy(update={"max_frame_bytes": 2048})
    with FrameProducer(small) as p, pytest.raises(BadFrame, match="byte limit"):
        p.submit(MODEL, jpeg(640, 480))


def test_unknown_model_and_bad_arguments(settings: Settings) -> None:
    with FrameProducer(settings) as p:
        with pytest.raises(UnknownModel, match="known models: .*shape_detector"):
            p.submit("no_such_model", jpeg())
        with pytest.raises(BadInput, match="correlation_id"):
            p.submit(MODEL, jpeg(), correlation_id="has spaces\nand newline")
        with pytest.raises(BadInput, match="deadline_ms"):
            p.submit(MODEL, jpeg(), deadline_ms=-5)
        with pytest.raises(BadInput, match="item 1: .*not a JPEG"):
            p.submit_many(
                [{"model_id": MODEL, "frame": jpeg()}, {"model_id": MODEL, "frame": b"junk"}]
            )
    assert queued(settings.redis_url) == []  # a bad item stops the whole batch


def test_a_model_served_by_some_worker_is_known(settings: Settings) -> None:
    redis.Redis.from_url(settings.redis_url).sadd(keys.SERVED_MODELS, "remote_model")
    with FrameProducer(settings) as p:
        p.submit("remote_model", jpeg())
        assert p.queue_depth("remote_model") == 1


def test_queue_full_rejects_exactly_the_excess(settings: Settings) -> None:
    s = settings.model_copy(update={"max_queue_depth": 5})
    with FrameProducer(s) as p:
        for _ in range(3):
            p.submit(MODEL, jpeg())
        with pytest.raises(QueueFull) as info:
            p.submit_many([{"model_id": MODEL, "frame": jpeg()} for _ in range(4)])
        handles = info.value.handles  # type: ignore[attr-defined]
        assert [h.refused is None for h in handles] == [True, True, False, False]
        assert p.queue_depth(MODEL) == 5
        with pytest.raises(QueueFull, match="MAX_QUEUE_DEPTH=5"):
            p.submit(MODEL, jpeg())
        assert handles[3].get().status == "rejected"
    client = redis.Redis.from_url(s.redis_url)
    dropped = client.hget(keys.dropped_counter(MODEL), "queue_full")
    assert int(dropped) == 3
    # the depth check and the claim check are one step: refused frames' bytes are never stored
    stored = [h.job_id for h in handles if client.exists(keys.frame_data(h.job_id))]
    assert stored == [h.job_id for h in handles[:2]]


def test_queue_full_drop_policy_counts_and_returns_rejected_handles(settings: Settings) -> None:
    s = settings.model_copy(update={"max_queue_depth": 2, "queue_full_policy": "drop"})
    with FrameProducer(s) as p:
        handles = [p.submit(MODEL, jpeg(), camera_id="c") for _ in range(4)]
        assert p.queue_depth(MODEL) == 2
    assert [h.refused is None for h in handles] == [True, True, False, False]
    result = handles[3].get()
    assert result.status == "rejected" and result.error and result.error.type == "QueueFull"
