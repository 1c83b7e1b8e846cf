"""The model runner: per-frame results from batches, isolation of a bad frame."""

from __future__ import annotations

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
        finish=written.append,
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
