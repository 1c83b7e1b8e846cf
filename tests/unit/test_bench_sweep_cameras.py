"""``framepool bench sweep``'s cameras: the schedule (periodic, seeded, phases
apart), its driver on a fake clock (grouping, lateness, missing results, the
reader's errors), and the figures taken from the results (latencies, the
per-camera statistics after the warm-up)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from benchmarks.harness import result_latencies
from benchmarks.sandbox import BenchError
from benchmarks.sweep_cameras import LEAD_S, camera_schedule, camera_stats, drive


# ------------------------------------------------------------------ schedule
def test_camera_schedule_is_periodic_per_camera_from_its_own_phase() -> None:
    sched = camera_schedule(cameras=5, fps=4.0, duration_s=3.0, seed=1)
    assert [t for t, _, _ in sched] == sorted(t for t, _, _ in sched)
    assert all(0 <= t < 3.0 for t, _, _ in sched)
    for cam in range(5):
        own = [(t, seq) for t, c, seq in sched if c == cam]
        assert [seq for _, seq in own] == list(range(len(own)))
        assert 0 <= own[0][0] < 0.25  # the phase is within one period
        gaps = [b[0] - a[0] for a, b in zip(own, own[1:], strict=False)]
        assert gaps and all(g == pytest.approx(0.25) for g in gaps)
        assert len(own) in (12, 13)  # 3 s at 4 frames/s from a phase in [0, 0.25)
    phases = {round(min(t for t, c, _ in sched if c == cam), 6) for cam in range(5)}
    assert len(phases) == 5  # unsynchronised


def test_camera_schedule_is_seeded() -> None:
    assert camera_schedule(8, 2.0, 2.0, seed=3) == camera_schedule(8, 2.0, 2.0, seed=3)
    assert camera_schedule(8, 2.0, 2.0, seed=3) != camera_schedule(8, 2.0, 2.0, seed=4)


@pytest.mark.parametrize("args", [(0, 1.0, 1.0), (1, 0.0, 1.0), (1, 1.0, 0.0)])
def test_camera_schedule_rejects_bad_arguments(args: tuple[int, float, float]) -> None:
    with pytest.raises(ValueError):
        camera_schedule(*args)


class FakeClock:
    """Time moves only when the driver sleeps (the reader thread only reads it)."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def test_drive_submits_frames_due_together_in_one_call_and_reads_all() -> None:
    clock = FakeClock()
    groups: list[list[int]] = []
    reader_threads: set[str] = set()

    def submit(indices: list[int]) -> list[str]:
        groups.append(indices)
        return [f"h{i}" for i in indices]

    def get(handle: str, timeout: float) -> dict[str, str]:
        reader_threads.add(threading.current_thread().name)
        return {"handle": handle}

    done, late = drive([0.0, 0.0, 0.0, 0.5, 0.5, 1.25], submit, get, clock, clock.sleep)
    assert groups == [[0, 1, 2], [3, 4], [5]]
    assert [i for i, _, _ in done] == list(range(6))
    assert [r["handle"] for _, r, _ in done] == [f"h{i}" for i in range(6)]
    assert all(ms >= 0 for _, _, ms in done)
    assert late == 0.0  # the fake clock never overshoots
    assert clock.sleeps == pytest.approx([LEAD_S, 0.5, 0.75])
    # results are read off the schedule's thread, by the reader threads
    assert reader_threads and all(t.startswith("sweep-reader-") for t in reader_threads)


def test_a_later_result_done_first_is_not_held_up_by_an_earlier_one() -> None:
    first_asked, first_done = threading.Event(), threading.Event()
    read_at: dict[str, float] = {}

    def get(handle: str, timeout: float) -> str:
        if handle == "h0":  # the first frame takes long; the second is done at once
            first_asked.set()
            assert first_done.wait(10)
        read_at[handle] = time.perf_counter()
        return handle

    def submit(indices: list[int]) -> list[str]:
        if indices == [1]:
            assert first_asked.wait(10)
        return [f"h{i}" for i in indices]

    timer = threading.Timer(0.3, first_done.set)
    timer.start()
    done, _ = drive([0.0, 0.01], submit, get)
    timer.join()
    assert [i for i, _, _ in done] == [0, 1]  # still in submission order
    assert read_at["h1"] < read_at["h0"]  # h1 was read while h0 was still out
    assert done[1][2] < done[0][2]  # and its latency does not include h0's wait


def test_drive_reports_how_late_a_submission_was() -> None:
    clock = FakeClock()

    def submit(indices: list[int]) -> list[int]:
        clock.t += 0.2  # a slow enqueue: the next frame goes out late
        return indices

    done, late = drive([0.0, 0.1], submit, lambda h, t: h, clock, clock.sleep)
    assert [i for i, _, _ in done] == [0, 1]
    assert late == pytest.approx(0.1)


def test_drive_raises_when_a_result_does_not_come() -> None:
    clock = FakeClock()
    with pytest.raises(BenchError, match="no result"):
        drive([0.0, 0.0], lambda idx: idx, lambda h, t: None, clock, clock.sleep)


def test_drive_re_raises_the_readers_error() -> None:
    clock = FakeClock()

    def get(handle: int, timeout: float) -> int:
        raise RuntimeError(f"broken {handle}")

    with pytest.raises(RuntimeError, match="broken 0"):
        drive([0.0, 1.0, 2.0], lambda idx: idx, get, clock, clock.sleep)


# ------------------------------------------------------------------ figures
def _result(enqueued: float, completed: float, *, status: str = "ok", queue: float = 1.0,
            inference: float = 2.0, batch: int = 2) -> SimpleNamespace:  # fmt: skip
    return SimpleNamespace(
        ok=status == "ok",
        status=SimpleNamespace(value=status),
        enqueued_at=enqueued,
        completed_at=completed,
        timings_ms=SimpleNamespace(queue=queue, inference=inference, decode=0.5),
        batch_size=batch,
    )


def test_result_latencies_splits_queue_and_inference_out() -> None:
    results = [_result(0.0, 0.010 * (i + 1), queue=3.0, inference=4.0) for i in range(5)]
    lat = result_latencies(results)
    assert lat["e2e_p50_ms"] == pytest.approx(30.0)
    assert lat["service_p50_ms"] == pytest.approx(27.0)
    assert lat["added_p50_ms"] == pytest.approx(26.0)
    assert lat["e2e_p99_ms"] == pytest.approx(49.6)


def test_camera_stats_keeps_the_window_after_warm_up() -> None:
    schedule = [(0.1, 0, 0), (0.5, 1, 0), (1.0, 0, 1), (1.5, 1, 1), (2.0, 2, 0), (2.5, 0, 2)]
    done = [
        (0, _result(0.0, 9.0), 999.0),  # warm-up: left out, whatever its latency
        (1, _result(0.0, 9.0), 999.0),
        (2, _result(1.0, 1.02), 20.0),
        (3, _result(1.5, 1.53), 30.0),
        (4, _result(2.0, 2.04, status="expired"), 40.0),
        (5, _result(2.5, 2.51), 10.0),
    ]
    x = camera_stats(schedule, done, warmup_s=1.0, max_late_s=0.002)
    assert x["frames"] == 4
    assert x["statuses"] == {"ok": 3, "expired": 1}
    assert x["cameras_seen"] == 3
    assert x["client_p50_ms"] == pytest.approx(20.0)
    assert x["steady_fps"] == pytest.approx(2 / (2.51 - 1.02), abs=0.01)  # rounded to 0.01
    assert x["max_submit_lateness_ms"] == pytest.approx(2.0)


def test_camera_stats_needs_answers() -> None:
    schedule = [(0.0, 0, 0), (1.0, 0, 1)]
    done = [(0, _result(0, 1, status="expired"), 1.0), (1, _result(0, 1, status="error"), 1.0)]
    with pytest.raises(BenchError, match="only 0 frames"):
        camera_stats(schedule, done, 0.0, 0.0)
