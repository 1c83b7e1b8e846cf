"""The worker's model runtime with a real Redis and real worker processes (CPU).

The ``faulty`` test model (tests/fixtures/zoo) does what each frame's top-left
pixel tells it: run normally, raise out-of-memory above batch k, raise a sticky
CUDA error, be slow. ``broken`` cannot load; ``slowload`` loads too slowly.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from typing import Any

import pytest
import redis

from framepool import keys
from framepool.celery_app import create_app
from framepool.settings import Settings
from producer import FrameProducer
from tests.faults import FIXTURE_ZOO, OK, OOM, STICKY, cmd_frame, record, wait_for
from workers.main import EXIT_DEVICE_LOST


@pytest.fixture()
def zoo_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"models_root": FIXTURE_ZOO})


def heartbeat(redis_url: str, worker: str) -> dict[str, Any] | None:
    raw = redis.Redis.from_url(redis_url).get(keys.worker_heartbeat(worker))
    return json.loads(raw) if raw else None


def kernel_table(redis_url: str, worker: str) -> dict[str, Any] | None:
    raw = redis.Redis.from_url(redis_url).get(keys.worker_kernels(worker))
    return json.loads(raw) if raw else None


def stream_job_ids(redis_url: str, camera: str, expect: int) -> Counter[str]:
    """Job ids on a camera's stream, once ``expect`` entries are there (or after 5 s)."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 5  # the stream is written just after the results
    while True:
        entries = client.xrange(keys.result_stream(camera))
        if len(entries) >= expect or time.monotonic() > deadline:
            return Counter(fields[b"job_id"].decode() for _, fields in entries)
        time.sleep(0.05)


def test_a_model_that_fails_to_load_does_not_stop_the_others(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    w = start_worker(
        ["faulty", "broken", "slowload"],
        extra=["--name", "iso@test"],
        MODELS_ROOT=str(FIXTURE_ZOO),
        MODEL_LOAD_TIMEOUT_MS="1500",
        HEARTBEAT_INTERVAL_SECONDS="0.5",
        wait=False,
    )
    w.models = ["faulty"]  # the only one that can become ready
    w.wait_ready(redis_url)
    with FrameProducer(zoo_settings) as p:
        results = [
            p.submit("faulty", cmd_frame(OK), camera_id="c").get(timeout=30) for _ in range(3)
        ]
    assert [r.status for r in results] == ["ok"] * 3
    hb = wait_for(lambda: heartbeat(redis_url, "iso@test"))
    models = hb["models"]
    assert models["faulty"]["state"] == "ready"
    assert models["broken"]["state"] == "failed"
    assert "broken on purpose" in models["broken"]["reason"]
    assert models["slowload"]["state"] == "failed"
    assert "MODEL_LOAD_TIMEOUT_MS" in models["slowload"]["reason"]
    served = {m.decode() for m in redis.Redis.from_url(redis_url).smembers(keys.SERVED_MODELS)}
    assert "faulty" in served and "broken" not in served
    log = w.log_path.read_text()
    assert '"model_load_failed"' in log and "broken on purpose" in log


def test_oom_above_batch_k_still_answers_every_frame(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    with FrameProducer(zoo_settings) as p:
        # queued before the worker starts, so the first batches are large
        handles = p.submit_many(
            [
                {"model_id": "faulty", "frame": cmd_frame(OOM, 3), "camera_id": "oom"}
                for _ in range(40)
            ]
        )
        lone = p.submit("faulty", cmd_frame(OOM, 0), camera_id="oom")  # OOM even alone
        start_worker(
            ["faulty"],
            extra=["--name", "oom@test"],
            MODELS_ROOT=str(FIXTURE_ZOO),
            MAX_BATCH_SIZE="16",
            BATCH_TIMEOUT_MS="50",
            HEARTBEAT_INTERVAL_SECONDS="0.5",
        )
        results = [h.get(timeout=60) for h in handles]
        alone = lone.get(timeout=60)
    assert all(r.status == "ok" for r in results), Counter(r.status for r in results)
    assert max(r.outputs["batch"] for r in results) <= 3
    assert alone.status == "error" and alone.error and alone.error.type == "GpuOutOfMemory"
    hb = wait_for(
        lambda: (
            (h := heartbeat(redis_url, "oom@test"))
            and h["models"]["faulty"]["stats"]["frames"] >= 41
            and h
        )
    )
    faulty = hb["models"]["faulty"]
    assert faulty["stats"]["oom_splits"] >= 1 and faulty["batch_cap"]["ooms"] >= 1
    assert faulty["batch_cap"]["current"] < faulty["batch_cap"]["limit"]
    assert sum(stream_job_ids(redis_url, "oom", 41).values()) == 41
    record(10, "GPU out of memory (above batch 3)", sent=41, answered=41, ok=len(results),
           lone_frame_error=alone.error.type, oom_splits=faulty["stats"]["oom_splits"],
           batch_cap=faulty["batch_cap"]["current"], worker_restarted=False)  # fmt: skip


def test_sticky_cuda_error_exits_non_zero_and_a_new_worker_finishes_the_frames(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    with FrameProducer(zoo_settings) as p:
        first = start_worker(
            ["faulty"],
            extra=["--name", "sick@test"],
            MODELS_ROOT=str(FIXTURE_ZOO),
            FAULTY_STICKY="1",
        )
        items = [
            {
                "model_id": "faulty",
                "frame": cmd_frame(STICKY if i == 5 else OK),
                "camera_id": "st",
                "seq": i,
            }
            for i in range(20)
        ]
        handles = p.submit_many(items)
        code = first.proc.wait(timeout=60)
        assert code == EXIT_DEVICE_LOST, first.log_tail()
        assert '"device_lost"' in first.log_path.read_text()
        start_worker(["faulty"], extra=["--name", "healthy@test"], MODELS_ROOT=str(FIXTURE_ZOO))
        results = [h.get(timeout=60) for h in handles]
    assert [r.status for r in results] == ["ok"] * 20
    assert [r.seq for r in results] == list(range(20))
    assert results[5].worker == "healthy@test"
    counts = stream_job_ids(redis_url, "st", 20)
    assert set(counts) == {h.job_id for h in handles} and set(counts.values()) == {1}
    record(11, "sticky CUDA error", sent=20, answered=20, lost=0, worker_exit_code=code,
           duplicate_stream_entries=0)  # fmt: skip


def test_heartbeats_appear_update_and_expire(redis_url: str, start_worker) -> None:
    w = start_worker(
        ["shape_detector"], extra=["--name", "hb@test"], HEARTBEAT_INTERVAL_SECONDS="0.5"
    )
    hb = wait_for(lambda: heartbeat(redis_url, "hb@test"))
    assert hb["worker"] == "hb@test" and hb["pid"] == w.proc.pid and hb["device"] == "cpu"
    assert hb["nvml"]["available"] is False and hb["nvml"]["reason"]
    assert hb["gpu_manager"]["status"] in ("disabled", "unavailable")
    assert hb["models"]["shape_detector"]["state"] == "ready"
    first = hb["updated_at"]
    wait_for(lambda: (h := heartbeat(redis_url, "hb@test")) and h["updated_at"] > first)
    client = redis.Redis.from_url(redis_url)
    assert b"hb@test" in client.smembers(keys.WORKERS)
    ttl = client.ttl(keys.worker_heartbeat("hb@test"))
    assert 0 < ttl <= keys.heartbeat_ttl(0.5)
    # the kernel table under a key of its own, with the heartbeat's TTL and stamp
    assert "kernels" not in hb["models"]["shape_detector"]
    assert hb["kernels"]["rows"] == {"shape_detector": 0}  # nothing profiled yet
    table = kernel_table(redis_url, "hb@test")
    assert table is not None and table["models"] == {"shape_detector": []}
    assert table["stamp"] == hb["kernels"]["stamp"]
    assert 0 < client.ttl(keys.worker_kernels("hb@test")) <= keys.heartbeat_ttl(0.5)
    w.stop(signal.SIGKILL)  # no clean-up: the keys must expire on their own
    wait_for(lambda: heartbeat(redis_url, "hb@test") is None, timeout=10)
    wait_for(lambda: kernel_table(redis_url, "hb@test") is None, timeout=10)


def test_profiling_every_n_batches_and_on_demand_shows_real_op_names(
    settings: Settings, redis_url: str, start_worker
) -> None:
    from framepool import codec
    from producer.sources.synthetic import SyntheticCamera

    image = codec.encode_jpeg(SyntheticCamera("c", 320, 240, seed=3).frame(0).image)
    start_worker(
        ["shape_detector"],
        extra=["--name", "prof@test"],
        HEARTBEAT_INTERVAL_SECONDS="0.5",
        PROFILE_EVERY_N_BATCHES="0",
    )
    app = create_app(settings)
    replies = app.control.broadcast(
        keys.PROFILE_COMMAND,
        arguments={"batches": 2},
        destination=["prof@test"],
        reply=True,
        timeout=5,
    )
    assert replies == [{"prof@test": {"ok": {"shape_detector": 2}}}]
    with FrameProducer(settings) as p:
        for i in range(4):
            assert p.submit("shape_detector", image, camera_id="p", seq=i).get(timeout=30).ok

    def kernels() -> list[dict[str, Any]] | None:
        hb = heartbeat(redis_url, "prof@test")
        model = hb["models"]["shape_detector"] if hb else {}
        if model.get("profiler", {}).get("profiled_batches") != 2:
            return None
        table = kernel_table(redis_url, "prof@test")  # the rows live under a key of their own
        if table is None or table["stamp"] != hb["kernels"]["stamp"]:  # type: ignore[index]
            return None
        rows: list[dict[str, Any]] = table["models"]["shape_detector"]
        assert hb["kernels"]["rows"] == {"shape_detector": len(rows)}  # type: ignore[index]
        return rows

    table = wait_for(kernels)
    names = {k["name"] for k in table}
    assert any(n.startswith("aten::") and "conv" in n for n in names), names
    for k in table:
        assert k["total_calls"] >= 1 and k["avg_time_ms"] == pytest.approx(
            k["total_time_ms"] / k["total_calls"], rel=1e-3, abs=1e-6
        )
        assert k["last_execution"].endswith("Z")
