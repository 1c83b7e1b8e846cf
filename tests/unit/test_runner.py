"""The model runner: per-frame results from batches, isolation of a bad frame."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framepool.manifest import ModelManifest
from framepool.schemas import InferenceResult
from models.base import Model
from workers.results import FrameRecord, Origin
from workers.runner import FrameJob, ModelRunner

POISON = -1.0


class Doubler(Model):
    """Returns 2x each frame's value; raises when a batch holds the poison value."""

    def __init__(self) -> None:
        super().__init__(
            ModelManifest(
                id="dbl",
                version="1",
                entrypoint="m:D",
                input_size=(1, 1),
                max_batch_size=64,
                path=Path("."),
            )
        )
        self.batches: list[int] = []

    def load(self) -> None: ...

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32)

    def infer(self, batch: torch.Tensor) -> Any:
        self.batches.append(len(batch))
        if (batch == POISON).any():
            raise RuntimeError("poisoned input")
        return batch.flatten() * 2

    def postprocess(self, raw: Any, sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        return [{"value": float(v)} for v in raw]


def job(i: int, value: float, deadline: float | None = None) -> FrameJob:
    meta = {
        "model_id": "dbl",
        "camera_id": "c",
        "seq": i,
        "captured_at": None,
        "enqueued_at": time.time(),
        "deadline_at": deadline,
        "format": "jpeg",
        "width": 1,
        "height": 1,
    }
    return FrameJob(FrameRecord(f"j{i}", f"c{i}", meta), np.array([value], np.float32), (1, 1))


def run(jobs: list[FrameJob], model: Doubler, max_batch: int = 64) -> tuple[list, list]:
    written: list[list[dict]] = []
    runner = ModelRunner(
        model,
        Origin("w1", "cpu", "1"),
        max_batch_size=max_batch,
        timeout_s=0.0,
        finish=lambda done: written.append([r for _, r in done]),
    )
    for j in jobs:  # queue them all before the thread starts: one batch
        runner.submit(j)
    runner.start()
    wait([j.future for j in jobs], timeout=10)
    runner.stop()
    assert runner.in_flight == 0
    return [j.future.result() for j in jobs], written


def test_each_frame_gets_its_own_result_from_one_batch() -> None:
    model = Doubler()
    results, written = run([job(i, float(i)) for i in range(5)], model)
    assert model.batches == [5]
    for i, r in enumerate(results):
        res = InferenceResult.model_validate(r)
        assert res.job_id == f"j{i}" and res.correlation_id == f"c{i}" and res.seq == i
        assert res.status == "ok" and res.outputs == {"value": 2.0 * i} and res.batch_size == 5
        assert res.worker == "w1" and res.model_version == "1"
    assert len(written) == 1 and [w["job_id"] for w in written[0]] == [f"j{i}" for i in range(5)]


def test_a_poison_frame_fails_alone_and_the_rest_of_its_batch_succeeds() -> None:
    model = Doubler()
    values = [1.0, 2.0, POISON, 4.0, 5.0, 6.0]
    results, _ = run([job(i, v) for i, v in enumerate(values)], model)
    statuses = [r["status"] for r in results]
    assert statuses == ["ok", "ok", "error", "ok", "ok", "ok"]
    assert results[2]["error"] == {"type": "RuntimeError", "message": "poisoned input"}
    assert [r["outputs"].get("value") for r in results if r["status"] == "ok"] == [
        2.0,
        4.0,
        8.0,
        10.0,
        12.0,
    ]


def test_expired_frames_never_reach_the_model() -> None:
    model = Doubler()
    past = time.time() - 1
    results, _ = run([job(0, 1.0, deadline=past), job(1, 2.0)], model)
    assert results[0]["status"] == "expired" and results[0]["batch_size"] == 0
    assert results[1]["status"] == "ok"
    assert model.batches == [1]  # only the live frame was run


def test_batches_respect_the_cap() -> None:
    model = Doubler()
    results, written = run([job(i, 1.0) for i in range(10)], model, max_batch=4)
    assert model.batches == [4, 4, 2]
    assert all(r["status"] == "ok" for r in results) and len(written) == 3


def test_wrong_number_of_outputs_is_an_error_per_frame() -> None:
    class Short(Doubler):
        def postprocess(self, raw: Any, sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
            return [{}]

    results, _ = run([job(i, 1.0) for i in range(3)], Short())
    # the batch of 3 fails, is split, and single frames (1 output each) then succeed
    assert [r["status"] for r in results] == ["ok", "ok", "ok"]
    assert all(r["batch_size"] == 1 for r in results)


class OomAbove(Doubler):
    """Raises CUDA out-of-memory for batches larger than ``k``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def infer(self, batch: torch.Tensor) -> Any:
        self.batches.append(len(batch))
        if len(batch) > self.k:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch {len(batch)})")
        return batch.flatten() * 2


def test_oom_splits_the_batch_shrinks_the_cap_and_answers_every_frame() -> None:
    model = OomAbove(k=3)
    runner = ModelRunner(
        model, Origin("w1", "cpu", "1"), max_batch_size=16, timeout_s=0.0, finish=lambda _: None
    )
    jobs = [job(i, float(i)) for i in range(16)]
    for j in jobs:
        runner.submit(j)
    runner.start()
    wait([j.future for j in jobs], timeout=10)
    results = [j.future.result() for j in jobs]
    assert [r["outputs"]["value"] for r in results] == [2.0 * i for i in range(16)]
    assert max(r["batch_size"] for r in results) <= 3
    assert runner.cap.current < 16 and runner.stats.oom_splits >= 1
    # the next batches start at the shrunken cap: no OOM for them
    more = [job(100 + i, 1.0) for i in range(6)]
    before = runner.stats.oom_splits
    for j in more:
        runner.submit(j)
    wait([j.future for j in more], timeout=10)
    runner.stop()
    assert all(j.future.result()["status"] == "ok" for j in more)
    assert runner.stats.oom_splits - before <= 1


def test_a_lone_frame_that_still_ooms_gets_an_error_result() -> None:
    results, _ = run([job(0, 1.0)], OomAbove(k=0))
    assert results[0]["status"] == "error"
    assert results[0]["error"]["type"] == "GpuOutOfMemory"


def test_a_sticky_cuda_error_fails_every_waiting_frame_and_reports_fatal() -> None:
    class Sticky(Doubler):
        def infer(self, batch: torch.Tensor) -> Any:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    from framepool.errors import DeviceLost

    fatal: list[BaseException] = []
    written: list[list[dict]] = []
    runner = ModelRunner(
        Sticky(),
        Origin("w1", "cpu", "1"),
        max_batch_size=2,
        timeout_s=0.0,
        finish=lambda done: written.append([r for _, r in done]),
        on_fatal=fatal.append,
    )
    jobs = [job(i, 1.0) for i in range(5)]
    for j in jobs:
        runner.submit(j)
    runner.start()
    wait([j.future for j in jobs], timeout=10)
    assert all(isinstance(j.future.exception(), DeviceLost) for j in jobs)
    assert len(fatal) == 1 and written == []  # no result is written for any of them
    late = runner.submit(job(9, 1.0))
    assert isinstance(late.exception(timeout=1), DeviceLost)
    assert runner.in_flight == 0
    runner.stop()


def test_stage_timings_and_stats_are_recorded() -> None:
    model = Doubler()
    runner = ModelRunner(
        model, Origin("w1", "cpu", "1"), max_batch_size=8, timeout_s=0.0, finish=lambda _: None
    )
    jobs = [job(i, 1.0) for i in range(4)]
    for j in jobs:
        runner.submit(j)
    runner.start()
    wait([j.future for j in jobs], timeout=10)
    runner.stop()
    t = jobs[0].future.result()["timings_ms"]
    assert t["inference"] > 0 and t["host_to_device"] >= 0 and "postprocess" in t
    snap = runner.stats.snapshot()
    assert snap["frames"] == 4 and snap["ok"] == 4 and snap["batches"] == 1
    assert snap["batch_sizes"] == {"4": 1}
    assert snap["timings_ms"]["inference"]["count"] == 4


def test_the_next_batch_runs_while_the_last_ones_results_are_written() -> None:
    """The results thread writes batch 1 while the runner goes on to batch 2; the
    results still go out in batch order, and no frame is resolved before its write."""
    model = Doubler()
    writing, release = threading.Event(), threading.Event()
    written: list[list[str]] = []

    def finish(done: list) -> None:
        if not written:  # hold the first batch's write
            writing.set()
            assert release.wait(10)
        written.append([r["job_id"] for _, r in done])

    runner = ModelRunner(
        model, Origin("w1", "cpu", "1"), max_batch_size=2, timeout_s=0.0, finish=finish
    )
    first = [job(0, 0.0), job(1, 1.0)]
    second = [job(2, 2.0), job(3, 3.0)]
    for j in first + second:  # the second batch waits as the first ends
        runner.submit(j)
    runner.start()
    try:
        assert writing.wait(10)
        deadline = time.monotonic() + 10
        while model.batches != [2, 2] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert model.batches == [2, 2]  # batch 2 ran while batch 1's write was held
        assert not any(j.future.done() for j in first + second)
        assert runner.in_flight == 4
        release.set()
        wait([j.future for j in first + second], timeout=10)
    finally:
        release.set()
        runner.stop()
    assert written == [["j0", "j1"], ["j2", "j3"]]
    assert [j.future.result()["outputs"]["value"] for j in second] == [4.0, 6.0]
    assert runner.in_flight == 0


def test_a_batch_no_frame_waits_behind_is_written_by_the_runner_itself() -> None:
    writers: list[str] = []

    def finish(done: list) -> None:
        writers.append(threading.current_thread().name)

    runner = ModelRunner(
        Doubler(), Origin("w1", "cpu", "1"), max_batch_size=2, timeout_s=0.0, finish=finish
    )
    runner.start()
    try:
        for i in range(2):  # one at a time: nothing waits behind either
            j = job(i, float(i))
            runner.submit(j)
            assert j.future.result(10)["outputs"]["value"] == 2.0 * i
    finally:
        runner.stop()
    assert writers == ["runner-dbl"] * 2


def test_stop_writes_out_every_finished_batch() -> None:
    model = Doubler()
    written: list[str] = []

    def slow_finish(done: list) -> None:
        time.sleep(0.05)
        written.extend(r["job_id"] for _, r in done)

    runner = ModelRunner(
        model, Origin("w1", "cpu", "1"), max_batch_size=1, timeout_s=0.0, finish=slow_finish
    )
    jobs = [job(i, float(i)) for i in range(4)]
    for j in jobs:
        runner.submit(j)
    runner.start()
    runner.stop()
    assert written == ["j0", "j1", "j2", "j3"]
    assert all(j.future.done() for j in jobs)


def _runner(**kw: Any) -> ModelRunner:
    return ModelRunner(Doubler(), Origin("w1", "cpu", "1"), max_batch_size=8, timeout_s=0.0,
                       finish=lambda done: None, **kw)  # fmt: skip


def test_an_idle_runner_runs_a_frames_intake_on_its_own_thread_then_its_batch() -> None:
    runner = _runner()
    runner.start()
    seen: list[str] = []
    j = job(0, 3.0)

    def intake() -> None:  # as the frame pool's: decode, then submit to the runner
        seen.append(threading.current_thread().name)
        runner.submit(j)

    try:
        assert runner.run_here(intake)
        assert j.future.result(10)["outputs"]["value"] == 6.0
    finally:
        runner.stop()
    assert seen == ["runner-dbl"]
    assert runner.in_flight == 0


def test_a_busy_runner_declines_the_intake_so_it_overlaps_the_batch() -> None:
    runner = _runner()  # not started: the submitted frame stays in flight
    runner.submit(job(0, 1.0))
    assert runner.in_flight == 1
    assert not runner.run_here(lambda: None)


def test_one_intake_at_a_time_is_handed_to_the_runner() -> None:
    runner = _runner()  # not started: the first intake stays queued
    assert runner.run_here(lambda: None)
    assert not runner.run_here(lambda: None)  # a second frame meanwhile: a pool thread


def test_an_intake_that_raises_does_not_end_the_runner() -> None:
    runner = _runner()
    runner.start()

    def broken() -> None:
        raise RuntimeError("a bug in the intake")

    try:
        assert runner.run_here(broken)
        j = job(1, 2.0)
        deadline = time.monotonic() + 5
        while not runner.run_here(lambda: runner.submit(j)):  # free again once it ran
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert j.future.result(10)["outputs"]["value"] == 4.0
    finally:
        runner.stop()


def test_an_intake_queued_when_the_runner_drains_is_run_and_refused() -> None:
    runner = _runner()  # not started: the intake is still queued when the drain comes
    j = job(0, 1.0)
    assert runner.run_here(lambda: runner.submit(j))
    assert runner.drain(RuntimeError("stopping")) == []
    assert isinstance(j.future.exception(1), RuntimeError)  # answered, not left waiting
    assert not runner.run_here(lambda: None)  # and no more once draining
