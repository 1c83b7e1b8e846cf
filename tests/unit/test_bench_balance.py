"""``benchmarks.balance``: a frame's wait for its own model, and the part of it
during which another worker's model was idle."""

from __future__ import annotations

import pytest

from benchmarks.balance import forward_span, idle_waits
from framepool.schemas import InferenceResult, Status, Timings


def _result(worker: str, enqueued: float, ready_after_ms: float, forward_at: float,
            inference_ms: float = 100.0) -> InferenceResult:  # fmt: skip
    """A frame decoded ``ready_after_ms`` after its enqueue, its forward pass at ``forward_at``."""
    timings = Timings(queue=ready_after_ms, inference=inference_ms, postprocess=0.0)
    return InferenceResult(job_id=f"{worker}-{enqueued}", correlation_id="c", model_id="m",
                           status=Status.ok, timings_ms=timings, enqueued_at=enqueued,
                           completed_at=forward_at + inference_ms / 1000.0,
                           worker=worker)  # fmt: skip


def test_the_wait_counts_as_lost_only_while_no_other_model_runs() -> None:
    a_busy = _result("a", enqueued=0.0, ready_after_ms=0.0, forward_at=0.0)  # 0 - 0.1 s
    # ready at 0.05 s on the busy worker a, its pass at 0.1 s: waited 50 ms
    behind = _result("a", enqueued=0.04, ready_after_ms=10.0, forward_at=0.1)
    # worker b ran from 0.06 to 0.16 s: of the 50 ms, 0.05-0.06 was lost
    b = _result("b", enqueued=0.05, ready_after_ms=10.0, forward_at=0.06)
    waits = dict(zip(["a_busy", "behind", "b"], idle_waits([a_busy, behind, b]), strict=True))
    assert waits["a_busy"] == (0.0, 0.0)
    assert waits["behind"][0] == pytest.approx(50.0)
    assert waits["behind"][1] == pytest.approx(10.0)
    assert waits["b"] == pytest.approx((0.0, 0.0))
    assert forward_span(b) == pytest.approx((0.06, 0.16))


def test_one_worker_alone_loses_nothing_to_another() -> None:
    first = _result("a", enqueued=0.0, ready_after_ms=0.0, forward_at=0.0)
    second = _result("a", enqueued=0.01, ready_after_ms=0.0, forward_at=0.1)
    assert idle_waits([first, second])[1] == pytest.approx((90.0, 0.0))
