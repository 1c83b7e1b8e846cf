"""The fault matrix (../shared/design/reliability.md) with a real Redis and real workers.

Each test makes one fault happen for real (a signal to a process group, a frame
that kills its worker, a batch longer than the visibility timeout) and checks
the ledger: frames sent, completed, lost, and written more than once.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis

from framepool import keys
from framepool.settings import Settings
from producer import FrameProducer
from tests.faults import (
    FIXTURE_ZOO,
    KILL,
    OK,
    SLOW,
    VT,
    Ledger,
    cmd_frame,
    png_bomb,
    record,
    wait_for,
    worker_env,
)
from tests.services import run_cli


@pytest.fixture()
def zoo_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"models_root": FIXTURE_ZOO})


def test_poison_frame_is_dead_lettered_and_the_others_complete(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    """Row 3: a frame that kills its worker every time is dead-lettered after K tries."""
    attempts = 1
    # One frame at a time: the worker asks Redis for the next frame only when it is
    # free, so when the poison frame kills it no BRPOP reply is on its way (kombu
    # records a frame as unacked only after reading that reply: a process that dies
    # in between loses the frame; docs/reliability.md, "the kombu window").
    env = worker_env(FAULTY_KILL="1", MAX_FRAME_ATTEMPTS=str(attempts), WORKER_CONCURRENCY="1")
    with FrameProducer(zoo_settings) as p:
        ledger = Ledger(p)
        poison = ledger.send("faulty", cmd_frame(KILL), camera_id="pz", seq=0)
        for seq in range(1, 11):
            ledger.send("faulty", cmd_frame(OK), camera_id="pz", seq=seq)
        deaths = 0
        deadline = time.monotonic() + 90
        while not poison.ready() and time.monotonic() < deadline:
            w = start_worker(["faulty"], wait=False, **env)
            wait_for(lambda w=w: w.proc.poll() is not None or poison.ready(), timeout=60)
            if w.proc.poll() is not None:
                deaths += 1
        ledger.collect(timeout=60)
    client = redis.Redis.from_url(redis_url)
    assert ledger.lost == [], ledger.diagnose(client, "faulty")
    result = ledger.results[poison.job_id]
    assert result.status == "error" and result.error and result.error.type == "PoisonFrame"
    # once in its first batch, then once per solo attempt
    assert deaths == 1 + attempts
    others = [r for j, r in ledger.results.items() if j != poison.job_id]
    assert [r.status for r in others] == ["ok"] * 10
    letters = [json.loads(x) for x in client.lrange(keys.DEAD_LETTERS, 0, -1)]
    assert [(d["kind"], d["job_id"], d["correlation_id"]) for d in letters] == [
        ("frame", poison.job_id, poison.correlation_id)
    ]
    assert set(ledger.stream_counts(client, ["pz"]).values()) == {1}
    record(3, "poison frame", **ledger.figures(client, ["pz"]), worker_deaths=deaths,
           dead_lettered=len(letters), max_frame_attempts=attempts)  # fmt: skip

    # Once the model is fixed (here: a worker that ignores the kill command), the
    # operator requeues it: a new job with the same correlation id, answered ok.
    start_worker(["faulty"], **worker_env())
    out = run_cli("dead-letters", "--requeue", "--kind", "frame", env={"REDIS_URL": redis_url})
    assert out.returncode == 0 and "requeued 1" in out.stdout, out.stdout + out.stderr
    assert client.llen(keys.DEAD_LETTERS) == 0

    def requeued() -> dict | None:
        for _, fields in client.xrange(keys.result_stream("pz")):
            r = json.loads(fields[b"result"])
            if r["correlation_id"] == poison.correlation_id and r["job_id"] != poison.job_id:
                return r
        return None

    again = wait_for(requeued, timeout=30)
    assert again["status"] == "ok" and again["seq"] == 0


def test_a_batch_longer_than_the_visibility_timeout_is_written_once(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    """Row 4: kombu redelivers a frame still running; its result is written once."""
    # A 1 s timeout, swept every second by each worker, and a 2.5 s batch: at least
    # one sweep falls while the frame runs, and the other worker gets it again.
    env = {**worker_env(), "VISIBILITY_TIMEOUT_SECONDS": "1"}
    start_worker(["faulty"], **env)
    start_worker(["faulty"], **env)
    with FrameProducer(zoo_settings) as p:
        ledger = Ledger(p)
        slow = ledger.send("faulty", cmd_frame(SLOW, 250), camera_id="vt", seq=0)
        ledger.collect(timeout=60)
        assert slow.get(timeout=1).status == "ok"
        client = redis.Redis.from_url(redis_url)
        dup = wait_for(
            lambda: int(client.hget(keys.dropped_counter("faulty"), "duplicate") or 0), timeout=20
        )
    assert dup >= 1
    assert ledger.lost == [], ledger.diagnose(client, "faulty")
    assert ledger.stream_counts(client, ["vt"]) == {slow.job_id: 1}
    record(4, "batch outlives the visibility timeout", **ledger.figures(client, ["vt"]),
           duplicate_executions_counted=dup, visibility_timeout_s=1)  # fmt: skip


def test_sigkill_mid_batch_loses_nothing(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    """Row 1: kill the worker's process group mid-batch, start another: nothing lost."""
    first = start_worker(["faulty"], **worker_env())
    with FrameProducer(zoo_settings) as p:
        ledger = Ledger(p)
        for seq in range(20):
            ledger.send("faulty", cmd_frame(SLOW, 20), camera_id="k1", seq=seq)  # 0.2 s each
        time.sleep(0.5)  # some are done, some running, the rest reserved or queued
        first.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        start_worker(["faulty"], **worker_env())
        ledger.collect(timeout=60)
        recovered_s = time.monotonic() - killed_at
    client = redis.Redis.from_url(redis_url)
    assert ledger.lost == [], ledger.diagnose(client, "faulty")
    assert ledger.statuses() == {"ok": 20}
    assert set(ledger.stream_counts(client, ["k1"]).values()) == {1}
    record(1, "worker SIGKILL mid-batch", **ledger.figures(client, ["k1"]),
           recovery_s=round(recovered_s, 1), visibility_timeout_s=int(VT))  # fmt: skip


def test_one_of_two_workers_killed_the_survivor_finishes(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    """Row 2: two workers on one queue, one SIGKILLed and not restarted."""
    doomed = start_worker(["faulty"], **worker_env())
    start_worker(["faulty"], **worker_env())
    with FrameProducer(zoo_settings) as p:
        ledger = Ledger(p)
        for seq in range(30):
            ledger.send("faulty", cmd_frame(SLOW, 10), camera_id="k2", seq=seq)
        time.sleep(0.5)
        doomed.stop(signal.SIGKILL)
        ledger.collect(timeout=60)
    client = redis.Redis.from_url(redis_url)
    assert ledger.lost == [], ledger.diagnose(client, "faulty")
    assert ledger.statuses() == {"ok": 30}
    assert set(ledger.stream_counts(client, ["k2"]).values()) == {1}
    record(2, "one of two workers killed", **ledger.figures(client, ["k2"]))


def test_sigterm_gives_unfinished_frames_back_at_once(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    """Row 5: a worker stopped with SIGTERM finishes its batch and returns the rest at once.

    The visibility timeout is an hour here: a frame that was not given back
    would not come back within the test, and would count as lost.
    """
    env = {"MODELS_ROOT": str(FIXTURE_ZOO), "VISIBILITY_TIMEOUT_SECONDS": "3600"}
    first = start_worker(["faulty"], **env)
    with FrameProducer(zoo_settings) as p:
        ledger = Ledger(p)
        for seq in range(40):
            ledger.send("faulty", cmd_frame(SLOW, 10), camera_id="k5", seq=seq)
        time.sleep(0.5)
        code = first.stop(signal.SIGTERM, timeout=30)
        done_by_first = len([h for h in ledger.sent.values() if h.ready()])
        start_worker(["faulty"], **env)
        ledger.collect(timeout=60)
    client = redis.Redis.from_url(redis_url)
    assert code == 0
    assert 0 < done_by_first < 40  # it stopped mid-stream
    assert ledger.lost == [], ledger.diagnose(client, "faulty")
    assert set(ledger.stream_counts(client, ["k5"]).values()) == {1}
    record(5, "SIGTERM", **ledger.figures(client, ["k5"]), done_before_stop=done_by_first,
           visibility_timeout_s=3600)  # fmt: skip


class _Evil:
    """Unpickling this runs a shell command: what a pickle-accepting worker would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_message_is_refused_and_nothing_runs(
    zoo_settings: Settings, redis_url: str, start_worker, tmp_path
) -> None:
    """Row 14: a pickle message pushed onto a frame queue is refused, never executed."""
    from framepool.celery_app import create_app

    start_worker(["faulty"], **worker_env())
    marker = tmp_path / "pwned"
    app = create_app(zoo_settings)
    evil = app.send_task(
        keys.INFER_TASK,
        args=(_Evil(str(marker)), {}),
        queue=keys.queue_name("faulty"),
        serializer="pickle",
    )
    with FrameProducer(zoo_settings) as p:
        after = p.submit("faulty", cmd_frame(OK), camera_id="k14").get(timeout=30)
        depth = wait_for(lambda: p.queue_depth("faulty") == 0, timeout=10)
    assert after.status == "ok"  # the worker kept going
    assert depth
    assert not marker.exists()
    assert evil.state == "PENDING"  # refused before it became a task: no result at all
    app.close()
    record(14, "pickle message on a frame queue", pickle_executed=marker.exists(),
           queue_left=0, next_frame=after.status.value)  # fmt: skip


def test_overload_refuses_exactly_the_excess_and_bounds_redis(
    zoo_settings: Settings, redis_url: str
) -> None:
    """Row 8: twice MAX_QUEUE_DEPTH produced with no worker: exactly the excess refused."""
    depth = 50
    s = zoo_settings.model_copy(update={"max_queue_depth": depth, "queue_full_policy": "drop"})
    client = redis.Redis.from_url(redis_url)
    before = int(client.info("memory")["used_memory"])
    with FrameProducer(s) as p:
        handles = [
            p.submit("faulty", cmd_frame(OK), camera_id="k8", seq=i) for i in range(2 * depth)
        ]
        queued = p.queue_depth("faulty")
    refused = [h for h in handles if h.refused is not None]
    grown_mb = (int(client.info("memory")["used_memory"]) - before) / 2**20
    counted = int(client.hget(keys.dropped_counter("faulty"), "queue_full") or 0)
    assert len(refused) == depth and queued == depth and counted == depth
    assert all(h.get(timeout=1).status == "rejected" for h in refused)
    # 50 queued frames of ~1 KB each: Redis holds the queue, not the refused ones
    assert grown_mb < 5
    record(8, "overload (2x MAX_QUEUE_DEPTH, no worker)", sent=2 * depth, queued=queued,
           refused=len(refused), counted_queue_full=counted, redis_growth_mb=round(grown_mb, 2))  # fmt: skip


def test_bad_frames_from_a_foreign_producer_get_errors_and_the_worker_goes_on(
    zoo_settings: Settings, redis_url: str, start_worker
) -> None:
    """Row 13: frames no SDK checked (corrupt, a pixel bomb, wrong meta) reach the worker."""
    from framepool.celery_app import create_app

    start_worker(["faulty"], **worker_env(MAX_FRAME_PIXELS="4000000"))
    app = create_app(zoo_settings)
    now = time.time()
    meta = {"model_id": "faulty", "camera_id": "k13", "seq": 0, "captured_at": None,
            "enqueued_at": now, "deadline_at": None, "format": "png", "width": 32, "height": 32}  # fmt: skip
    good = cmd_frame(OK)
    bomb = png_bomb()
    bad = {
        "corrupt": (good[:40] + b"\x00" * 200, meta),
        "pixel_bomb": (bomb, {**meta, "width": 20_000, "height": 20_000}),
        "not_bytes": ("a string", meta),
        "bad_meta": (good, {"model_id": "faulty"}),
    }
    sent = {k: app.send_task(keys.INFER_TASK, args=a, queue=keys.queue_name("faulty"))
            for k, a in bad.items()}  # fmt: skip
    answers = {k: r.get(timeout=30) for k, r in sent.items()}
    with FrameProducer(zoo_settings) as p:
        after = p.submit("faulty", good, camera_id="k13").get(timeout=30)
    app.close()
    assert all(a["status"] == "error" and a["error"]["message"] for a in answers.values()), answers
    assert after.status == "ok"
    record(13, "bad input from a foreign producer", answered_error=len(answers),
           errors={k: a["error"]["type"] for k, a in answers.items()}, next_frame=after.status.value)  # fmt: skip


@pytest.mark.timeout(1800)  # the long version (make faults) runs for minutes
def test_long_run_memory_stays_flat(settings: Settings, redis_url: str, start_worker) -> None:
    """Row 15: many frames through one worker; its RSS after warm-up stays flat.

    2,000 frames here; ``FRAMEPOOL_LONG=1`` (``make faults``) sends 100,000.
    """
    import psutil

    total = 100_000 if os.environ.get("FRAMEPOOL_LONG") == "1" else 2_000
    worker = start_worker(["noop"])
    frame = cmd_frame(OK)
    client = redis.Redis.from_url(redis_url)
    with FrameProducer(settings) as p:

        def send(n: int, first_seq: int) -> list:
            handles = []
            for start in range(0, n, 500):  # in windows, so the queue stays short
                window = p.submit_many(
                    {"model_id": "noop", "frame": frame, "camera_id": "k15", "seq": first_seq + i}
                    for i in range(start, min(n, start + 500))
                )
                handles += [h.get(timeout=120) for h in window]
            return handles

        warm = send(500, 0)
        proc = psutil.Process(worker.proc.pid)
        before = proc.memory_info().rss / 2**20
        began = time.monotonic()
        results = send(total, 500)
        took = time.monotonic() - began
        after = proc.memory_info().rss / 2**20
    assert all(r.status == "ok" for r in warm + results)
    growth = after - before
    # a leak of 1 KB a frame would be 2 MB here and 100 MB over the long run
    assert growth < max(16.0, total / 1000 * 0.25), f"RSS grew {growth:.1f} MB over {total} frames"
    record(15, "long run (noop model, one worker)", frames=total, lost=0,
           rss_before_mb=round(before, 1), rss_growth_mb=round(growth, 1),
           frames_per_s=round(total / took, 1), stream_entries=client.xlen(keys.result_stream("k15")))  # fmt: skip
