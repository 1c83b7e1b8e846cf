"""The foundation, end to end: synthetic cameras → Redis → a real worker process → results.

4 cameras, 500 frames through ``shape_detector``: every frame gets exactly one
result carrying its own correlation id, camera and seq; the boxes match the
ground truth of *that* frame (a batching mix-up would fail); batches larger
than 1 occur; a corrupt frame in the middle gets an ``error`` result and
nothing else is lost; the worker's JSON log lines carry each frame's
correlation id.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import redis

from framepool import codec, keys
from framepool.settings import Settings
from models.zoo.shape_detector.evaluate import match
from producer import FrameProducer
from producer.sources.synthetic import SyntheticCamera

CAMERAS = 4
PER_CAMERA = 125
MODEL = "shape_detector"


def corrupt_jpeg() -> bytes:
    """A frame whose header is valid (so the producer takes it) but whose data is not."""
    good = codec.encode_jpeg(SyntheticCamera("x", seed=9).frame(0).image)
    return good[: len(good) // 4] + bytes(64)


def test_500_frames_from_4_cameras_each_get_their_own_result(
    settings: Settings, start_worker
) -> None:
    worker = start_worker([MODEL], LOG_LEVEL="DEBUG", MAX_BATCH_SIZE="16")
    cams = [SyntheticCamera(f"cam{c}", 640, 480, fps=10, seed=100 + c) for c in range(CAMERAS)]
    truth: dict[tuple[str, int], tuple] = {}
    items = []
    for seq in range(PER_CAMERA):  # interleaved, as live cameras would be
        for cam in cams:
            f = cam.frame(seq)
            truth[(cam.camera_id, seq)] = f.objects
            items.append(
                {
                    "model_id": MODEL,
                    "frame": codec.encode_jpeg(f.image),
                    "camera_id": cam.camera_id,
                    "seq": seq,
                }
            )
    bad_at = len(items) // 2
    items.insert(
        bad_at, {"model_id": MODEL, "frame": corrupt_jpeg(), "camera_id": "cam1", "seq": 10_000}
    )

    with FrameProducer(settings) as producer:
        handles = []
        for i in range(0, len(items), 50):  # bursts keep the queue fed: batches form
            handles += producer.submit_many(items[i : i + 50])
        results = [h.get(timeout=180) for h in handles]

    # exactly one result per frame, each with its own ids
    assert len(results) == len(items) == CAMERAS * PER_CAMERA + 1
    assert len({r.job_id for r in results}) == len(results)
    for h, r, item in zip(handles, results, items, strict=True):
        assert r.job_id == h.job_id and r.correlation_id == h.correlation_id
        assert (r.camera_id, r.seq) == (item["camera_id"], item["seq"])
        assert r.model_id == MODEL and r.model_version == "1.0.0" and r.device == "cpu"

    bad = results[bad_at]
    assert bad.status == "error" and bad.error is not None and bad.error.type == "BadFrame"
    assert "cannot decode jpeg" in bad.error.message
    good = [r for i, r in enumerate(results) if i != bad_at]
    assert Counter(r.status for r in good) == {"ok": CAMERAS * PER_CAMERA}

    # the boxes are those of this very frame
    tp = fp = fn = 0
    frames_all_found = 0
    for r in good:
        t, f, n = match(r.outputs["detections"], truth[(r.camera_id, r.seq)])
        tp, fp, fn = tp + t, fp + f, fn + n
        frames_all_found += n == 0
    assert tp / (tp + fn) >= 0.9, f"recall {tp / (tp + fn):.3f}"
    assert tp / (tp + fp) >= 0.9, f"precision {tp / (tp + fp):.3f}"
    assert frames_all_found / len(good) >= 0.85

    # batching happened inside the worker, and the timings add up
    sizes = Counter(r.batch_size for r in good)
    assert max(sizes) > 1, sizes
    for r in good:
        t = r.timings_ms
        assert t.decode > 0 and t.inference > 0 and t.total >= t.inference
        assert r.completed_at is not None and r.completed_at >= r.enqueued_at

    # every result is also on its camera's stream
    client = redis.Redis.from_url(settings.redis_url)
    for cam in cams:
        expected = {r.job_id for r in results if r.camera_id == cam.camera_id}
        deadline = time.monotonic() + 5  # the stream is written just after the result
        while True:
            entries = client.xrange(keys.result_stream(cam.camera_id))
            on_stream = {json.loads(f[b"result"])["job_id"] for _, f in entries}
            if on_stream == expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert on_stream == expected
    # the claim-checked frames' bytes went with their results: nothing left behind
    assert client.keys(keys.frame_data("*")) == []

    # the worker's JSON log lines for each frame carry its correlation id
    worker.stop()
    lines = [json.loads(x) for x in worker.log_path.read_text().splitlines() if x.startswith("{")]
    done = {ln["correlation_id"]: ln for ln in lines if ln.get("event") == "frame_done"}
    for h, r in zip(handles, results, strict=True):
        line = done[h.correlation_id]
        assert line["job_id"] == h.job_id and line["status"] == r.status
        assert line.get("camera_id") == r.camera_id
    failed = [ln for ln in lines if ln.get("event") == "frame_decode_failed"]
    assert [ln["correlation_id"] for ln in failed] == [bad.correlation_id]
