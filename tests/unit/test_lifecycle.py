"""Model lifecycle: states follow the error rate over a sliding window of frames."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from workers import lifecycle
from workers.lifecycle import ModelHealth, ModelState

Change = tuple[str, ModelState, ModelState, str]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health(window: int = 20, changes: list[Change] | None = None, **kw: Any) -> ModelHealth:
    def on_change(model_id: str, old: ModelState, new: ModelState, reason: str) -> None:
        if changes is not None:
            changes.append((model_id, old, new, reason))

    h = ModelHealth(
        "det",
        window=window,
        degraded_rate=kw.pop("degraded_rate", 0.1),
        unhealthy_rate=kw.pop("unhealthy_rate", 0.5),
        on_change=on_change,
        **kw,
    )
    h.ready()
    return h


def test_state_values_equal_names() -> None:
    assert [s.value for s in ModelState] == ["loading", "ready", "degraded", "unhealthy", "failed"]
    assert ModelState("degraded") is ModelState.degraded
    assert ModelState.ready == "ready"


def test_starts_loading_then_ready_with_callback() -> None:
    changes: list[Change] = []
    h = ModelHealth("det", 20, 0.1, 0.5, on_change=lambda *a: changes.append(a))
    assert h.state is ModelState.loading
    h.ready()
    assert h.state is ModelState.ready
    assert changes == [("det", ModelState.loading, ModelState.ready, "loaded")]


def test_transitions_down_and_back_up() -> None:
    changes: list[Change] = []
    h = health(window=20, changes=changes)
    assert h.record(ok=20, errors=0) is ModelState.ready
    assert h.record(ok=0, errors=2) is ModelState.degraded  # 2/20 = 0.10
    assert h.record(ok=0, errors=8) is ModelState.unhealthy  # 10/20 = 0.50
    assert h.record(ok=10, errors=0) is ModelState.unhealthy  # the oldest 10 ok slid out: 0.50
    assert h.record(ok=2, errors=0) is ModelState.degraded  # two errors slid out: 8/20
    assert h.record(ok=6, errors=0) is ModelState.degraded  # 2/20 = 0.10, still >= 0.1
    assert h.record(ok=1, errors=0) is ModelState.ready  # 1/20 = 0.05
    states = [(old, new) for _, old, new, _ in changes[1:]]
    assert states == [
        (ModelState.ready, ModelState.degraded),
        (ModelState.degraded, ModelState.unhealthy),
        (ModelState.unhealthy, ModelState.degraded),
        (ModelState.degraded, ModelState.ready),
    ]
    assert all(model_id == "det" for model_id, *_ in changes)
    assert "error rate" in changes[1][3]


def test_thresholds_are_inclusive() -> None:
    h = health(window=10)
    h.record(ok=9, errors=0)
    assert h.record(ok=0, errors=1) is ModelState.degraded  # exactly 0.1
    h2 = health(window=10)
    h2.record(ok=9, errors=0)
    assert h2.state is ModelState.ready
    h3 = health(window=10)
    assert h3.record(ok=5, errors=5) is ModelState.unhealthy  # exactly 0.5


def test_needs_minimum_samples_before_judging() -> None:
    h = health(window=50)
    assert h.min_samples == 10
    assert h.record(ok=0, errors=9) is ModelState.ready  # 9 frames: too few to judge
    assert h.error_rate() == 1.0
    assert h.record(ok=0, errors=1) is ModelState.unhealthy  # the 10th frame


def test_small_window_needs_only_window_samples() -> None:
    h = health(window=4)
    assert h.min_samples == 4
    assert h.record(ok=0, errors=3) is ModelState.ready
    assert h.record(ok=0, errors=1) is ModelState.unhealthy


def test_window_slides_and_big_batches_keep_their_proportion() -> None:
    h = health(window=10)
    h.record(ok=0, errors=10)
    assert h.state is ModelState.unhealthy
    h.record(ok=100, errors=0)
    assert h.error_rate() == 0.0 and h.state is ModelState.ready
    h.record(ok=75, errors=25)  # larger than the window: 25% kept
    assert h.error_rate() == pytest.approx(0.2)
    assert h.state is ModelState.degraded
    snap = h.snapshot()
    assert snap["window_frames"] == 10


def test_counters_are_cumulative() -> None:
    h = health(window=10)
    h.record(ok=30, errors=4)
    h.record(ok=6, errors=0)
    snap = h.snapshot()
    assert snap["inferences"] == 40 and snap["errors"] == 4
    assert h.inferences == 40 and h.errors == 4


def test_failed_is_terminal() -> None:
    changes: list[Change] = []
    h = health(changes=changes)
    h.failed("weights missing")
    assert h.state is ModelState.failed
    assert h.record(ok=50, errors=0) is ModelState.failed
    assert h.record(ok=0, errors=50) is ModelState.failed
    h.ready()
    h.failed("again")
    assert h.state is ModelState.failed
    assert h.snapshot()["reason"] == "weights missing"
    assert [(old, new) for _, old, new, _ in changes] == [
        (ModelState.loading, ModelState.ready),
        (ModelState.ready, ModelState.failed),
    ]
    assert changes[-1][3] == "weights missing"


def test_loading_is_not_judged() -> None:
    h = ModelHealth("det", 10, 0.1, 0.5)
    assert h.record(ok=0, errors=20) is ModelState.loading
    h.ready()  # starts with a clean window
    assert h.error_rate() == 0.0
    assert h.record(ok=10, errors=0) is ModelState.ready


def test_raising_callback_is_logged_and_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def info(self, event: str, **kw: Any) -> None: ...

        def warning(self, event: str, **kw: Any) -> None:
            logged.append((event, kw))

    monkeypatch.setattr(lifecycle, "log", Log())

    def boom(*_: Any) -> None:
        raise RuntimeError("dashboard down")

    h = ModelHealth("det", 10, 0.1, 0.5, on_change=boom)
    h.ready()
    assert h.record(ok=0, errors=10) is ModelState.unhealthy
    assert h.state is ModelState.unhealthy
    assert [e for e, _ in logged] == ["model_state_callback_failed"] * 2
    assert "dashboard down" in logged[0][1]["error"]


def test_snapshot_fields_and_since_moves_on_change() -> None:
    clock = Clock()
    h = ModelHealth("det", 10, 0.1, 0.5, clock=clock)
    assert h.snapshot()["since"] == 1000.0
    clock.now = 1005.0
    h.ready()
    clock.now = 1010.0
    h.record(ok=10, errors=0)  # no change: since stays
    snap = h.snapshot()
    assert snap["state"] == "ready" and snap["since"] == 1005.0
    assert set(snap) >= {"state", "reason", "error_rate", "inferences", "errors", "since"}
    clock.now = 1020.0
    h.record(ok=0, errors=5)
    assert h.snapshot()["since"] == 1020.0 and h.snapshot()["state"] == "unhealthy"


def test_invalid_thresholds() -> None:
    with pytest.raises(ValueError):
        ModelHealth("det", 10, 0.6, 0.5)
    with pytest.raises(ValueError):
        ModelHealth("det", 0, 0.1, 0.5)
    with pytest.raises(ValueError):
        health().record(ok=-1, errors=0)


def test_concurrent_records_keep_exact_counts() -> None:
    h = health(window=50)

    def work() -> None:
        for _ in range(500):
            h.record(ok=3, errors=1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.inferences == 8 * 500 * 4 and h.errors == 8 * 500
    assert h.state is ModelState.degraded  # 25% errors
