"""Per-kernel profiling: real torch ops folded into a bounded table, on a schedule."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import torch

from workers import profiling
from workers.profiling import BatchProfiler, KernelTable, fold_key_averages

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
T0 = datetime(2025, 10, 13, 12, 34, 55, tzinfo=UTC)


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append((level, event, kw))


@pytest.fixture()
def logs(monkeypatch: pytest.MonkeyPatch) -> RecordingLog:
    rec = RecordingLog()
    monkeypatch.setattr(profiling, "log", rec)
    return rec


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    ).eval()


def run_batch(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


# ------------------------------------------------------------------ real torch
def test_profiling_a_real_cnn_batch_yields_aten_conv_rows() -> None:
    model, x = small_cnn(), torch.randn(4, 3, 64, 64)
    run_batch(model, x)  # warm-up
    table = KernelTable()
    prof = BatchProfiler(every_n=1, table=table, clock=lambda: T0.timestamp())
    with prof.profile("cpu"):
        out = run_batch(model, x)
    assert out.shape == (4, 10)

    rows = table.snapshot()
    names = {r["name"] for r in rows}
    assert any(n.startswith("aten::") and "conv" in n for n in names), names
    assert "[memory]" not in names
    assert all(r["device_type"] == "cpu" for r in rows)
    for r in rows:
        assert r["total_calls"] >= 1
        assert r["avg_time_ms"] == pytest.approx(r["total_time_ms"] / r["total_calls"])
        assert r["total_time_ms"] >= 0 and r["avg_memory_mb"] >= 0
        assert r["last_execution"] == "2025-10-13T12:34:55Z"
        assert ISO_Z.match(r["last_execution"])
    conv2d = next(r for r in rows if r["name"] == "aten::conv2d")
    assert conv2d["total_calls"] == 2  # two conv layers, one batch
    # self times: the sum of all ops cannot exceed the wall time of the batch
    assert sum(r["total_time_ms"] for r in rows) < 10_000
    st = prof.stats()
    assert st["profiled_batches"] == 1 and st["fold_ms_avg"] is not None


def test_warm_up_profiles_nothing_and_leaves_the_profiler_free() -> None:
    table = KernelTable()
    prof = BatchProfiler(every_n=1, table=table)
    ms = prof.warm_up("cpu")
    assert isinstance(ms, float) and ms >= 0
    assert table.snapshot() == [] and prof.stats()["profiled_batches"] == 0
    with prof.profile("cpu"):
        torch.ones(3) + 1
    assert prof.stats()["profiled_batches"] == 1


def test_warm_up_while_busy_returns_none() -> None:
    assert profiling._PROFILER_LOCK.acquire()
    try:
        assert BatchProfiler(every_n=1).warm_up() is None
    finally:
        profiling._PROFILER_LOCK.release()


def test_overhead_is_measured_against_unprofiled_batches() -> None:
    model, x = small_cnn(), torch.randn(4, 3, 64, 64)
    prof = BatchProfiler(every_n=0)
    assert prof.stats()["overhead_ms_avg"] is None
    for _ in range(5):
        t0 = time.perf_counter()
        run_batch(model, x)
        prof.record_batch_ms((time.perf_counter() - t0) * 1000.0)
    with prof.profile("cpu"):
        run_batch(model, x)
    st = prof.stats()
    assert isinstance(st["overhead_ms_avg"], float)
    assert st["overhead_ms_avg"] > -1000.0  # a number, comparable to batch times


def test_overhead_and_fold_time_from_a_fake_timer() -> None:
    ticks = iter([0.0, 0.030, 0.030, 0.032, 1.0, 1.050, 1.050, 1.054])  # seconds
    prof = BatchProfiler(every_n=1, timer=lambda: next(ticks))
    prof.record_batch_ms(10.0)
    prof.record_batch_ms(20.0)  # EMA: 10 + 0.2 * (20 - 10) = 12
    for _ in range(2):
        with prof.profile("cpu"):
            torch.ones(3) + 1
    st = prof.stats()
    assert st["profiled_batches"] == 2
    assert st["overhead_ms_avg"] == pytest.approx(((30 - 12) + (50 - 12)) / 2)
    assert st["fold_ms_avg"] == pytest.approx((2 + 4) / 2)


def test_two_profiles_second_batch_adds_up() -> None:
    model, x = small_cnn(), torch.randn(2, 3, 32, 32)
    table = KernelTable()
    prof = BatchProfiler(every_n=1, table=table)
    for _ in range(2):
        with prof.profile("cpu"):
            run_batch(model, x)
    conv2d = next(r for r in table.snapshot() if r["name"] == "aten::conv2d")
    assert conv2d["total_calls"] == 4


def test_exception_in_body_propagates_runs_once_and_leaves_table_untouched() -> None:
    table = KernelTable()
    prof = BatchProfiler(every_n=1, table=table)
    ran = []
    with pytest.raises(ValueError, match="bad batch"), prof.profile("cpu"):
        ran.append(1)
        torch.ones(3) + 1
        raise ValueError("bad batch")
    assert ran == [1]
    assert table.snapshot() == []
    assert prof.stats()["profiled_batches"] == 0
    # the module lock was released: the next batch is profiled
    with prof.profile("cpu"):
        torch.ones(3) + 1
    assert prof.stats()["profiled_batches"] == 1


def test_busy_profiler_skips_with_warning_and_runs_body_once(logs: RecordingLog) -> None:
    prof = BatchProfiler(every_n=1)
    ran = []
    assert profiling._PROFILER_LOCK.acquire()
    try:
        with prof.profile("cpu"):
            ran.append(threading.get_ident())
    finally:
        profiling._PROFILER_LOCK.release()
    assert len(ran) == 1
    assert prof.stats()["profiled_batches"] == 0
    assert prof.stats()["skipped_batches"] == 1
    assert ("warning", "profile_skipped") in [(lvl, ev) for lvl, ev, _ in logs.events]


def test_profiler_that_fails_to_start_does_not_fail_the_batch(
    logs: RecordingLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_: Any) -> Any:
        raise RuntimeError("profiler already enabled")

    monkeypatch.setattr(torch.profiler, "profile", broken)
    prof = BatchProfiler(every_n=1)
    ran = []
    with prof.profile("cpu"):
        ran.append(1)
    assert ran == [1]
    warned = [kw for lvl, ev, kw in logs.events if ev == "profile_skipped"]
    assert warned and warned[0]["reason"] == "profiler_start_failed"
    assert "already enabled" in warned[0]["error"]


# ------------------------------------------------------------------ scheduling
def test_every_n_profiles_every_third_batch() -> None:
    prof = BatchProfiler(every_n=3)
    assert [prof.should_profile() for _ in range(9)] == [False, False, True] * 3


def test_every_n_zero_never_profiles_unless_requested() -> None:
    prof = BatchProfiler(every_n=0)
    assert not any(prof.should_profile() for _ in range(10))
    assert prof.request(2) == 2
    assert prof.stats()["pending_on_demand"] == 2
    assert [prof.should_profile() for _ in range(5)] == [True, True, False, False, False]
    assert prof.stats()["pending_on_demand"] == 0


def test_on_demand_requests_add_up_and_mix_with_schedule() -> None:
    prof = BatchProfiler(every_n=4)
    assert prof.request(1) == 1
    assert prof.request(1) == 2
    got = [prof.should_profile() for _ in range(8)]
    assert got == [True, True, False, True, False, False, False, True]


def test_request_is_thread_safe() -> None:
    prof = BatchProfiler(every_n=0)
    threads = [
        threading.Thread(target=lambda: [prof.request(1) for _ in range(100)]) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(prof.should_profile() for _ in range(1000)) == 800


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        BatchProfiler(every_n=-1)
    with pytest.raises(ValueError):
        BatchProfiler(every_n=1).request(-1)
    with pytest.raises(ValueError):
        KernelTable(max_names=0)
    with pytest.raises(ValueError, match="sort_by"):
        KernelTable().top(3, sort_by="bogus")  # type: ignore[arg-type]


def test_stats_fields() -> None:
    st = BatchProfiler(every_n=5).stats()
    assert {
        "profiled_batches",
        "pending_on_demand",
        "every_n",
        "overhead_ms_avg",
        "fold_ms_avg",
    } <= set(st)
    assert st["every_n"] == 5 and st["profiled_batches"] == 0


# ------------------------------------------------------------------ the table
def filled_table() -> KernelTable:
    t = KernelTable()
    t.add("a", "cpu", calls=10, time_ms=10.0, memory_mb=5.0, at=T0)  # total 10, avg 1
    t.add("b", "cpu", calls=2, time_ms=8.0, memory_mb=0.0, at=T0)  # total 8, avg 4
    t.add("c", "cuda", calls=50, time_ms=5.0, memory_mb=0.0, at=T0)  # total 5, avg .1
    return t


@pytest.mark.parametrize(
    ("sort_by", "order"),
    [("total_time", ["a", "b", "c"]), ("avg_time", ["b", "a", "c"]), ("calls", ["c", "a", "b"])],
)
def test_top_sorts_by_each_key(sort_by: Any, order: list[str]) -> None:
    t = filled_table()
    assert [r["name"] for r in t.top(3, sort_by=sort_by)] == order
    assert [r["name"] for r in t.top(1, sort_by=sort_by)] == order[:1]


def test_top_filters_min_calls_and_defaults_to_total_time() -> None:
    t = filled_table()
    assert [r["name"] for r in t.top(10)] == ["a", "b", "c"]
    assert [r["name"] for r in t.top(10, min_calls=10)] == ["a", "c"]


def test_add_accumulates_and_keeps_latest_execution() -> None:
    t = KernelTable()
    later = T0 + timedelta(seconds=5)
    t.add("k", "cuda", calls=1, time_ms=2.0, memory_mb=4.0, at=later)
    t.add("k", "cuda", calls=3, time_ms=6.0, memory_mb=4.0, at=T0)
    t.add("k", "cpu", calls=1, time_ms=1.0, memory_mb=0.0, at=T0)  # separate row
    (row,) = [r for r in t.snapshot() if r["device_type"] == "cuda"]
    assert row["total_calls"] == 4
    assert row["total_time_ms"] == pytest.approx(8.0)
    assert row["avg_time_ms"] == pytest.approx(2.0)
    assert row["avg_memory_mb"] == pytest.approx(2.0)
    assert row["last_execution"] == "2025-10-13T12:35:00Z"
    assert len(t) == 2


def test_last_execution_is_converted_to_utc() -> None:
    t = KernelTable()
    t.add(
        "k",
        "cpu",
        1,
        1.0,
        0.0,
        at=datetime(2025, 10, 13, 14, 34, 55, tzinfo=timezone(timedelta(hours=2))),
    )
    assert t.snapshot()[0]["last_execution"] == "2025-10-13T12:34:55Z"


def test_cap_keeps_the_names_with_most_total_time() -> None:
    t = KernelTable(max_names=5)
    for i in range(20):
        t.add(f"op{i}", "cpu", calls=1, time_ms=float(i), memory_mb=0.0, at=T0)
    assert len(t) == 5
    assert {r["name"] for r in t.snapshot()} == {f"op{i}" for i in range(15, 20)}
    assert t.dropped == 15
    t.add("light", "cpu", calls=1, time_ms=0.5, memory_mb=0.0, at=T0)
    assert "light" not in {r["name"] for r in t.snapshot()}
    t.add("op15", "cpu", calls=1, time_ms=1.0, memory_mb=0.0, at=T0)  # existing: no eviction
    assert len(t) == 5


class FakeAvg:
    def __init__(self, key: str, device: str, count: int, **attrs: float) -> None:
        self.key, self.count = key, count
        self.device_type = getattr(torch.autograd.DeviceType, device)
        for k, v in attrs.items():
            setattr(self, k, v)


def test_fold_uses_self_times_and_device_spellings() -> None:
    t = KernelTable()
    events = [
        FakeAvg(
            "aten::conv2d",
            "CPU",
            2,
            self_cpu_time_total=3000.0,
            self_cpu_memory_usage=2 * 1024 * 1024,
        ),
        FakeAvg("aten::empty", "CPU", 1, self_cpu_time_total=10.0, self_cpu_memory_usage=-4096),
        FakeAvg("[memory]", "CPU", 3, self_cpu_time_total=0.0, self_cpu_memory_usage=-1),
        FakeAvg("sm80_gemm", "CUDA", 4, self_device_time_total=800.0, self_device_memory_usage=0),
        FakeAvg(
            "old_kernel", "CUDA", 1, self_cuda_time_total=500.0, self_cuda_memory_usage=1024 * 1024
        ),
    ]
    assert fold_key_averages(events, t, T0) == 4
    rows = {(r["name"], r["device_type"]): r for r in t.snapshot()}
    assert rows[("aten::conv2d", "cpu")]["total_time_ms"] == pytest.approx(3.0)
    assert rows[("aten::conv2d", "cpu")]["avg_memory_mb"] == pytest.approx(1.0)
    assert rows[("aten::empty", "cpu")]["avg_memory_mb"] == 0.0  # frees are not negative memory
    assert rows[("sm80_gemm", "cuda")]["avg_time_ms"] == pytest.approx(0.2)
    assert rows[("old_kernel", "cuda")]["total_time_ms"] == pytest.approx(0.5)
    assert rows[("old_kernel", "cuda")]["avg_memory_mb"] == pytest.approx(1.0)
