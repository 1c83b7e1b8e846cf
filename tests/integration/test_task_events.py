"""Task events from a real worker process: all of them arrive, in fewer messages.

Flower (and ``celery events``) read the worker's task events from Redis pub/sub.
framepool's workers send them in batches (``framepool.celery_app.BatchedTaskEvents``):
every frame still has its received, started and succeeded events, but several
travel in one ``task-multi`` message."""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict

import redis

from framepool import codec
from framepool.settings import Settings
from producer import FrameProducer
from producer.sources.synthetic import SyntheticCamera
from tests.faults import wait_for


def test_every_frame_has_its_three_events_in_fewer_messages(
    settings: Settings, start_worker
) -> None:
    start_worker(["noop"])
    client = redis.Redis.from_url(settings.redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe("*celeryev*")
    seen: dict[str, set[str]] = defaultdict(set)
    shown: dict[str, str] = {}  # the result Flower shows, per task
    messages = [0]
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            msg = pubsub.get_message(timeout=0.2)
            if not msg or msg["type"] != "pmessage":
                continue
            envelope = json.loads(msg["data"])
            body = envelope["body"]
            if envelope["properties"].get("body_encoding") == "base64":
                import base64

                body = base64.b64decode(body).decode()
            events = json.loads(body)
            events = events if isinstance(events, list) else [events]
            messages[0] += 1
            for ev in events:
                if ev.get("type", "").startswith("task-") and "uuid" in ev:
                    seen[ev["uuid"]].add(ev["type"])
                    if ev["type"] == "task-succeeded":
                        shown[ev["uuid"]] = ev.get("result")

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    frame = codec.encode_jpeg(SyntheticCamera("ev", 160, 120, seed=1).frame(0).image)
    try:
        with FrameProducer(settings) as p:
            items = [
                {"model_id": "noop", "frame": frame, "correlation_id": f"ev-{i}"} for i in range(40)
            ]
            handles = p.submit_many(items)
            assert all(h.get(timeout=30).ok for h in handles)
        want = {"task-received", "task-started", "task-succeeded"}
        ids = [h.job_id for h in handles]
        wait_for(lambda: all(seen[j] >= want for j in ids), "all task events", timeout=10)
    finally:
        stop.set()
        reader.join(2)
        pubsub.close()
    events = sum(len(seen[j]) for j in ids)
    assert events == 3 * len(ids)
    # batched: Celery's own flushing averages ~2 events per message here, the
    # 20 ms batches 12-17
    assert events >= 4 * messages[0], (events, messages[0])
    # the task's result in Flower is one line about the frame's result
    for i, j in enumerate(ids):
        line = shown[j]
        assert re.fullmatch(rf"ok model=noop batch=\d+ total=[\d.]+ms cid=ev-{i}", line), line
