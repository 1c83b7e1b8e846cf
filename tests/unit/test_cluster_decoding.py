"""The cluster reader's pure parts, no Redis: a queue head's ``enqueued_at`` read out
of a kombu envelope (the quick path around the frame, the whole decode, garbage
tolerated) and the latency histograms (merge, clean, PromQL-like quantiles)."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack
import pytest

from framepool import keys
from monitoring import histograms
from monitoring.cluster import quantile_ms
from monitoring.queues import enqueued_at
from tests.unit.test_cluster import NOW, kombu_message


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"[]", b"{}", b'{"body": 5}', b'{"body": "!!!"}', b"\xff\xfe",
     kombu_message({"enqueued_at": "yesterday"}), kombu_message({"enqueued_at": float("nan")}),
     json.dumps({"body": base64.b64encode(b"\xc1").decode()}).encode()],
)  # fmt: skip
def test_enqueued_at_tolerates_garbage(raw: Any) -> None:
    assert enqueued_at(raw) is None


def test_enqueued_at_reads_json_bodies_too() -> None:
    msg = json.loads(kombu_message({"enqueued_at": 12.5}))
    msg["body"] = base64.b64encode(json.dumps([[None, {"enqueued_at": 12.5}], {}, {}]).encode())
    msg["body"], msg["content-type"] = msg["body"].decode(), "application/json"
    assert enqueued_at(json.dumps(msg)) == 12.5


def test_quantile_ms_interpolates_like_promql() -> None:
    h = {"buckets": [[1, 0], [2, 10], [4, 30]], "sum": 100.0, "count": 40}
    assert quantile_ms(h, 0.25) == 2.0  # rank 10: top of the (1, 2] bucket
    assert quantile_ms(h, 0.5) == 3.0  # rank 20: halfway through (2, 4]
    assert quantile_ms(h, 0.99) == 4.0  # in +Inf: the highest finite bound
    assert quantile_ms(h, 0.0) == 1.0
    assert quantile_ms(h, 1.5) is None and quantile_ms({"count": 0}, 0.5) is None
    assert quantile_ms("garbage", 0.5) is None


def test_histograms_merge_and_clean() -> None:
    a = {"buckets": [[1, 1], [5, 3]], "sum": 6.0, "count": 4}
    b = {"buckets": [[1, 2], [5, 2]], "sum": 2.0, "count": 2}
    assert histograms.merge([a, b]) == {"buckets": [[1, 3], [5, 5]], "sum": 8.0, "count": 6}
    c = {"buckets": [[2, 1]], "sum": 1.0, "count": 1}  # other bounds: union, exact per bound
    assert histograms.merge([a, c])["buckets"] == [[1, 1], [2, 2], [5, 4]]
    messy = {"buckets": [[5, 2], ["x", 1], [1, 3], [2, None]], "sum": "?", "count": 1}
    assert histograms.clean(messy) == {"buckets": [[1, 3], [5, 3]], "sum": 0.0, "count": 3}
    assert histograms.merge([None, 7]) == histograms.empty()


@pytest.mark.parametrize("frame_bytes", [0, 1, 2, 3, 200, 255, 256, 70_000, 70_001, 70_002])
def test_enqueued_at_decodes_only_around_the_frame_and_agrees_with_a_whole_decode(
    frame_bytes: int,
) -> None:
    """kombu's envelope, body first, binary frame (bin8/16/32): the quick path reads the meta."""
    from monitoring.queues import _quick_meta

    meta = {"model_id": "m", "enqueued_at": NOW - 3.25, "camera_id": "c"}
    body = msgpack.packb([[b"\xff" * frame_bytes, meta], {}, {"chain": None}], use_bin_type=True)
    raw = json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "binary",
        "content-type": "application/x-msgpack", "headers": {"task": keys.INFER_TASK},
        "properties": {"body_encoding": "base64", "delivery_tag": "x", "priority": 0},
    }).encode()  # fmt: skip
    assert _quick_meta(raw) == meta
    assert enqueued_at(raw) == NOW - 3.25
    # the same message not body first: read whole, same answer
    envelope = json.loads(raw)
    reordered = json.dumps({"headers": envelope.pop("headers"), **envelope}).encode()
    assert _quick_meta(reordered) is None and enqueued_at(reordered) == NOW - 3.25
