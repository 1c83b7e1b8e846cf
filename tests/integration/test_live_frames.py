"""Live-frame policies and per-camera order, with a real Redis and a real worker.

- latest-frame-wins: while the model is busy, only the newest queued frame of
  each camera runs; the older ones are answered ``expired`` (``Superseded``)
  and counted as ``superseded``;
- a camera's stream holds its results in ``seq`` order per model; a result that
  arrives after a later frame's is appended marked ``late``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from framepool import keys
from framepool.errors import BadInput
from framepool.settings import LivePolicy, Settings
from producer import FrameProducer
from producer.results import CameraResults
from tests.faults import FIXTURE_ZOO, OK, SLOW, cmd_frame, wait_for
from workers.results import ResultWriter


@pytest.fixture()
def zoo_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"models_root": FIXTURE_ZOO})


def _dropped(redis_url: str, model_id: str) -> dict[str, int]:
    raw = redis.Redis.from_url(redis_url).hgetall(keys.dropped_counter(model_id))
    return {k.decode(): int(v) for k, v in raw.items()}


def test_latest_frame_wins_under_a_blocked_worker(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    start_worker(["faulty"], MODELS_ROOT=str(FIXTURE_ZOO), MAX_BATCH_SIZE="32")
    with FrameProducer(zoo_settings) as p:
        # 1.5 s in the forward pass: the runner is busy while every camera frame is queued
        blocker = p.submit("faulty", cmd_frame(SLOW, 150), camera_id="blocker")
        time.sleep(0.3)
        handles = p.submit_many(
            {
                "model_id": "faulty",
                "frame": cmd_frame(OK),
                "camera_id": cam,
                "seq": seq,
                "latest_wins": True,
            }
            for seq in range(6)
            for cam in ("north", "south")
        )
        results = [h.get(timeout=30) for h in handles]
        assert blocker.get(timeout=30).status == "ok"
    ran = sorted((r.camera_id, r.seq) for r in results if r.status == "ok")
    assert ran == [("north", 5), ("south", 5)]
    superseded = [r for r in results if r.status == "expired"]
    assert len(superseded) == 10
    assert {r.error.type for r in superseded if r.error} == {"Superseded"}
    assert _dropped(redis_url, "faulty").get("superseded") == 10


def test_the_model_policy_applies_and_a_submit_overrides_it(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    start_worker(["faulty"], MODELS_ROOT=str(FIXTURE_ZOO), MAX_BATCH_SIZE="32")
    policy = {"faulty": LivePolicy(latest_wins=True)}
    s = zoo_settings.model_copy(update={"live_policies": policy})
    with FrameProducer(s) as p:
        blocker = p.submit("faulty", cmd_frame(SLOW, 100), camera_id="blocker")
        time.sleep(0.3)
        by_policy = [p.submit("faulty", cmd_frame(OK), camera_id="east", seq=i) for i in range(3)]
        opted_out = [
            p.submit("faulty", cmd_frame(OK), camera_id="west", seq=i, latest_wins=False)
            for i in range(3)
        ]
        blocker.get(timeout=30)
        east = [h.get(timeout=30).status for h in by_policy]
        west = [h.get(timeout=30).status for h in opted_out]
        assert east == ["expired", "expired", "ok"]
        assert west == ["ok", "ok", "ok"]
        with pytest.raises(BadInput, match="camera_id"):
            p.submit("faulty", cmd_frame(OK), latest_wins=True)


def _result(model: str, seq: int | None, enqueued_at: float, job: str) -> dict[str, Any]:
    return {
        "job_id": job,
        "correlation_id": job,
        "model_id": model,
        "camera_id": "cam-order",
        "seq": seq,
        "status": "ok",
        "error": None,
        "enqueued_at": enqueued_at,
    }


def test_a_camera_stream_marks_late_results_instead_of_reordering(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    writer = ResultWriter(client, maxlen=1000)
    t = time.time()
    writer.write([_result("det", 1, t + 1, "a"), _result("det", 3, t + 3, "c")])
    writer.write([_result("det", 2, t + 2, "b")])  # enqueued before seq 3, delivered after it
    writer.write([_result("cls", 2, t + 2, "x")])  # another model keeps its own order
    writer.write([_result("det", 0, t + 10, "restart")])  # the camera restarted its seq
    writer.write([_result("det", 4, t + 4, "old4")])  # seq 4 > 0: in seq order after the restart
    writer.write([_result("det", 1, t + 3.5, "older1")])  # below 4 and enqueued before it: late
    writer.write([_result("det", None, t + 11, "noseq")])  # no seq: never late

    reader = CameraResults(client, "cam-order")
    entries = [(r.raw["job_id"], r.late) for r in reader.recent(100)]
    assert entries == [
        ("a", False),
        ("c", False),
        ("b", True),
        ("x", False),
        ("restart", False),
        ("old4", False),
        ("older1", True),
        ("noseq", False),
    ]
    in_order = CameraResults(client, "cam-order", skip_late=True).recent(100)
    assert [r.raw["job_id"] for r in in_order] == ["a", "c", "x", "restart", "old4", "noseq"]
    assert '"late": true' in next(r for r in reader.recent(100) if r.late).as_json()


def test_follow_yields_results_written_after_it_started(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    writer = ResultWriter(client, maxlen=1000)
    writer.write([_result("det", 1, time.time(), "before")])
    reader = CameraResults(client, "cam-order")
    reader.recent(0)  # start after what is there now
    stream = reader.follow(block_ms=100)
    writer.write([_result("det", 2, time.time(), "after")])
    got = wait_for(lambda: next(stream), timeout=5)
    assert got.raw["job_id"] == "after" and not got.late


def test_one_batch_is_written_in_enqueue_order(redis_url: str) -> None:
    """Decode threads hand a batch's frames to the runner in the order they finish:
    the stream still gets a camera's frames of one batch in the order they were sent."""
    client = redis.Redis.from_url(redis_url)
    writer = ResultWriter(client, maxlen=1000)
    t = time.time()
    batch = [_result("det", 2, t + 2, "two"), _result("det", 0, t, "zero"),
             _result("det", 1, t + 1, "one")]  # fmt: skip
    assert writer.write(batch) == set()
    entries = CameraResults(client, "cam-order").recent(10)
    assert [(r.raw["job_id"], r.late) for r in entries] == [
        ("zero", False),
        ("one", False),
        ("two", False),
    ]


def _command_calls(client: redis.Redis) -> dict[str, int]:
    return {k: v["calls"] for k, v in client.info("commandstats").items()}


def test_a_batch_is_one_round_trip_and_survives_a_script_flush(redis_url: str) -> None:
    """EVALSHA straight on the client: no SCRIPT EXISTS per batch (a redis-py pipeline
    sends one before every execute), and a flushed script cache is reloaded."""
    client = redis.Redis.from_url(redis_url)
    writer = ResultWriter(client, maxlen=1000)
    t = time.time()
    writer.write([_result("det", 1, t, "warm")])  # the first call loads the script
    client.config_resetstat()
    for i in range(3):
        writer.write([_result("det", 2 + i, t + 1 + i, f"b{i}")])
    calls = _command_calls(client)
    assert calls.get("cmdstat_evalsha") == 3
    assert not any(k.startswith("cmdstat_script") for k in calls)
    client.script_flush()
    assert writer.write([_result("det", 9, t + 9, "after-flush")]) == set()
    assert client.exists(keys.celery_result("after-flush"))
    assert writer.write([_result("det", 9, t + 9, "after-flush")]) == {"after-flush"}
