"""Claim check and the worker-written result, with a real Redis and a real worker process.

The producer stores each frame's bytes under ``keys.frame_data(job_id)`` and sends
a message without them; the worker reads them, writes the result itself (Celery's
result key, in Celery's format, with the camera stream, one round trip per batch)
and deletes the bytes. Frames sent inline (an older producer, or
``FRAME_CLAIM_CHECK=false``) are served by the same worker.
"""

from __future__ import annotations

import redis

from framepool import codec, keys
from framepool.settings import Settings
from producer import FrameProducer
from producer.sources.synthetic import SyntheticCamera

MODEL = "shape_detector"


def frames(n: int) -> list[bytes]:
    cam = SyntheticCamera("cc", 320, 240, seed=5)
    return [codec.encode_jpeg(cam.frame(i).image) for i in range(n)]


def test_claim_checked_inline_and_missing_frames(settings: Settings, start_worker) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    data = frames(6)
    inline = settings.model_copy(update={"frame_claim_check": False})
    with FrameProducer(settings) as p, FrameProducer(inline) as old:
        # queued before any worker runs, so a frame's bytes can be lost meanwhile
        checked = [p.submit(MODEL, f, camera_id="cc", seq=i) for i, f in enumerate(data[:4])]
        sent_inline = [
            old.submit(MODEL, f, camera_id="cc", seq=4 + i) for i, f in enumerate(data[4:])
        ]
        assert all(client.exists(keys.frame_data(h.job_id)) for h in checked)
        assert not any(client.exists(keys.frame_data(h.job_id)) for h in sent_inline)
        client.delete(keys.frame_data(checked[1].job_id))  # e.g. it outlived FRAME_TTL_SECONDS

        start_worker([MODEL])
        results = [h.get(timeout=60) for h in checked + sent_inline]

        # Celery's own view of each result: stored, in its format, by the worker
        for h, r in zip(checked + sent_inline, results, strict=True):
            stored = p.app.AsyncResult(h.job_id)
            assert stored.state == "SUCCESS" and stored.date_done is not None
            assert stored.result["job_id"] == r.job_id == h.job_id
            ttl = client.ttl(keys.celery_result(h.job_id))
            assert 0 < ttl <= settings.result_ttl_seconds

    lost = results[1]
    assert lost.status == "error" and lost.error is not None
    assert lost.error.type == "FrameMissing" and "FRAME_TTL_SECONDS" in lost.error.message
    assert [r.status for i, r in enumerate(results) if i != 1] == ["ok"] * 5
    assert all(r.outputs["detections"] for i, r in enumerate(results) if i != 1)
    # every answered frame's bytes are gone with its result, and each is on the stream once
    assert not client.keys(keys.frame_data("*"))
    entries = client.xrange(keys.result_stream("cc"))
    assert sorted(int(f[b"seq"]) for _, f in entries) == list(range(6))
