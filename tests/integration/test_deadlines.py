"""Deadlines: a frame not started in time is answered ``expired`` and never reaches the model."""

from __future__ import annotations

import time

from framepool import codec
from framepool.settings import Settings
from producer import FrameProducer
from producer.sources.synthetic import SyntheticCamera
from tests.faults import record


def test_frames_past_their_deadline_expire_and_others_run(settings: Settings, start_worker) -> None:
    image = codec.encode_jpeg(SyntheticCamera("c", 320, 240, seed=1).frame(0).image)
    with FrameProducer(settings) as p:
        stale = [
            p.submit("shape_detector", image, camera_id="c", seq=i, deadline_ms=200)
            for i in range(5)
        ]
        fresh = p.submit("shape_detector", image, camera_id="c", seq=5)  # no deadline
        time.sleep(0.4)  # no worker yet: the deadlines pass while the frames wait
        start_worker(["shape_detector"])
        expired = [h.get(timeout=60) for h in stale]
        ok = fresh.get(timeout=60)
    for r in expired:
        assert r.status == "expired" and r.error and r.error.type == "DeadlineExceeded"
        assert r.batch_size == 0 and r.timings_ms.inference == 0 and r.outputs == {}
    assert ok.status == "ok" and ok.batch_size >= 1 and "detections" in ok.outputs
    record(9, "stale frames", sent=6, expired=len(expired), reached_model=0, fresh_frame=ok.status)
