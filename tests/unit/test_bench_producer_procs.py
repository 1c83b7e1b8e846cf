"""benchmarks.producer_procs: frames shared over client processes."""

from __future__ import annotations

import pytest

from benchmarks.producer_procs import _run, shares


def test_shares_split_the_frames_evenly_and_lose_none() -> None:
    assert shares(10, 4) == [3, 3, 2, 2]
    assert shares(3, 4) == [1, 1, 1, 0]
    assert shares(8, 1) == [8]
    for n in (0, 1, 7, 100, 1001):
        for count in (1, 2, 3, 16):
            got = shares(n, count)
            assert sum(got) == n and len(got) == count and max(got) - min(got) <= 1
    with pytest.raises(ValueError):
        shares(10, 0)


def test_a_run_outside_a_started_process_says_so() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _run(0, 8, 4)


def test_proc_cpu_sums_per_kind_and_finds_the_busiest_process() -> None:
    import os
    import time

    from benchmarks.gpu_meters import ProcCpu

    me = os.getpid()
    meter = ProcCpu({"worker-0": me, "worker-1": me, "producer-0": me})
    end = time.process_time() + 0.5
    while time.process_time() < end:  # burn 0.5 s of this process's CPU
        pass
    got = meter.stop(frames=10)
    ms = got["cpu_ms_per_frame"]  # /proc counts in 10 ms ticks: 1 ms a frame here
    assert ms["worker"] == pytest.approx(2 * ms["producer"], abs=4.0)  # two "workers"
    assert ms["producer"] >= 45.0  # >= 0.5 s / 10 frames
    assert 0.5 < got["busiest_cpus"]["worker"] <= 1.05  # busy the whole time, one CPU
