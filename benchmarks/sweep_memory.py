"""The Redis-memory axis of ``framepool bench sweep``: bytes held per queued frame.

``k`` frames of one model are queued with no worker running, size by size, with
the frame's bytes claim-checked (under a key of their own, the default) and, for
comparison, carried in the Celery message (``FRAME_CLAIM_CHECK=false``: kombu's
Redis transport then stores the msgpack body base64-encoded in its JSON
envelope). Three measures, each per frame: ``used_memory`` (``INFO memory``)
after less before, allocator overhead included; ``MEMORY USAGE`` of the queue's
list plus every frame key; and the mean length of the message and frame value.
A warm-up enqueue before each measurement takes the one-off costs (kombu's
bindings, the first connection's buffers) out of the difference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import redis

from benchmarks.harness import test_frames
from benchmarks.sandbox import BenchError
from framepool import keys
from framepool.settings import Settings

MODEL = "resnet18"  # any model of the zoo: the producer needs no worker to queue for it
DISTINCT = 8  # distinct frames per size, cycled
CHUNK = 10  # frames per submit_many
WARMUP_FRAMES = 4


def memory_figures(
    *,
    frames: int,
    jpeg_bytes: float,
    message_bytes: float,
    frame_key_bytes: float,
    stored_bytes: int,
    used_delta: int,
) -> dict[str, Any]:
    """Per-frame bytes from the totals of ``frames`` queued frames, and their ratio
    to the JPEG's own size. ``message_bytes`` and ``frame_key_bytes`` are already
    per frame (means); ``stored_bytes`` (``MEMORY USAGE`` sums) and ``used_delta``
    are totals."""
    if frames < 1 or jpeg_bytes <= 0:
        raise ValueError(f"need frames >= 1 and jpeg_bytes > 0, got {frames}, {jpeg_bytes}")
    stored = stored_bytes / frames
    used = used_delta / frames
    payload = message_bytes + frame_key_bytes
    return {
        "frames": frames,
        "jpeg_bytes": round(jpeg_bytes),
        "message_bytes": round(message_bytes),
        "frame_key_bytes": round(frame_key_bytes),
        "payload_bytes": round(payload),
        "base64_jpeg_bytes": 4 * math.ceil(jpeg_bytes / 3),
        "stored_bytes_per_frame": round(stored),
        "used_bytes_per_frame": round(used),
        "overhead_bytes_per_frame": round(used - jpeg_bytes),
        "payload_ratio": round(payload / jpeg_bytes, 3),
        "stored_ratio": round(stored / jpeg_bytes, 3),
        "used_ratio": round(used / jpeg_bytes, 3),
    }


def body_encoding(message: bytes) -> str:
    """How kombu's Redis transport stored a message's body (``base64``, ...; ``?``)."""
    try:
        return str(json.loads(message)["properties"].get("body_encoding", "none"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "?"


def _frame_keys(client: redis.Redis) -> Iterator[bytes]:
    pattern = keys.frame_data("*") if hasattr(keys, "frame_data") else None
    if pattern is not None:
        yield from client.scan_iter(match=pattern, count=1000)


def _clear(client: redis.Redis, model_id: str) -> None:
    client.delete(*keys.queue_lists(model_id))
    stale = list(_frame_keys(client))
    if stale:
        client.delete(*stale)


def _enqueue(settings: Settings, model_id: str, jpegs: list[bytes], k: int) -> None:
    from producer import FrameProducer

    producer = FrameProducer(settings)
    try:
        for start in range(0, k, CHUNK):
            producer.submit_many(
                {"model_id": model_id, "frame": jpegs[i % len(jpegs)], "camera_id": "mem", "seq": i}
                for i in range(start, min(k, start + CHUNK))
            )
    finally:
        producer.close()  # its connections and their buffers are gone before the reading


def memory_point(
    client: redis.Redis, settings: Settings, model_id: str, jpegs: list[bytes], k: int
) -> dict[str, Any]:
    """Queue ``k`` frames of ``model_id`` (no worker serves it) and measure Redis."""
    _clear(client, model_id)
    _enqueue(settings, model_id, jpegs, WARMUP_FRAMES)
    _clear(client, model_id)
    before = int(client.info("memory")["used_memory"])
    _enqueue(settings, model_id, jpegs, k)
    queue = keys.queue_name(model_id)
    try:
        queued = sum(int(client.llen(name)) for name in keys.queue_lists(model_id))
        if queued != k or client.llen(queue) != k:
            raise BenchError(f"expected {k} frames in {queue}, found {queued}")
        after = int(client.info("memory")["used_memory"])
        stored = int(client.memory_usage(queue, samples=0) or 0)
        message = 0
        for start in range(0, k, CHUNK):
            message += sum(len(m) for m in client.lrange(queue, start, start + CHUNK - 1))
        encoding = body_encoding(client.lindex(queue, 0) or b"")
        frame_keys = list(_frame_keys(client))
        values = 0
        for name in frame_keys:
            stored += int(client.memory_usage(name, samples=0) or 0)
            values += int(client.strlen(name))
    finally:
        _clear(client, model_id)
    if frame_keys and len(frame_keys) != k:
        raise BenchError(f"expected {k} claim-checked frames, found {len(frame_keys)}")
    jpeg = sum(len(jpegs[i % len(jpegs)]) for i in range(k)) / k
    figs = memory_figures(frames=k, jpeg_bytes=jpeg, message_bytes=message / k,
                          frame_key_bytes=values / k, stored_bytes=stored,
                          used_delta=after - before)  # fmt: skip
    return {**figs, "claim_check": bool(frame_keys), "body_encoding": encoding}


def modes() -> list[tuple[str, dict[str, Any]]]:
    """The ways a frame can be queued: claim-checked (when this framepool has it) and in
    the message."""
    if "frame_claim_check" in Settings.model_fields:
        return [("claim check", {"frame_claim_check": True}),
                ("in message", {"frame_claim_check": False})]  # fmt: skip
    return [("in message", {})]


def redis_memory(
    redis_url: str,
    sizes: tuple[tuple[int, int], ...],
    k: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every size and mode in turn; automatic AOF rewrites are held off meanwhile
    (a rewrite's buffer would count in ``used_memory``)."""
    client = redis.Redis.from_url(redis_url)
    old = client.config_get("auto-aof-rewrite-percentage").get("auto-aof-rewrite-percentage", "100")
    client.config_set("auto-aof-rewrite-percentage", 0)
    points = []
    try:
        for w, h in sizes:
            jpegs = test_frames(DISTINCT, w, h, Settings().jpeg_quality)
            for mode, extra in modes():
                settings = Settings(
                    redis_url=redis_url, max_queue_depth=max(10_000, 2 * k), **extra
                )
                x = memory_point(client, settings, MODEL, jpegs, k)
                points.append({"width": w, "height": h, "mode": mode, **x})
                log(f"redis memory {w}x{h} {mode}: {x['used_bytes_per_frame'] / 1024:.1f} KB "
                    f"per frame ({x['used_ratio']:.2f}x the {x['jpeg_bytes'] / 1024:.1f} KB JPEG)")  # fmt: skip
    finally:
        client.config_set("auto-aof-rewrite-percentage", old)
        client.close()
    return {"model": MODEL, "frames": k, "modes": [m for m, _ in modes()], "points": points}
