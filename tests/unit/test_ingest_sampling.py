"""Ingest's fps sampler: timestamps in, chosen frames out (every n-th, uneven ratios
on a grid, jitter, gaps and going back), and its refusal of a nonpositive fps."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest

from framepool.errors import BadInput
from producer.sampling import FpsSampler

# ---------------------------------------------------------------- the sampler


def chosen(times: Iterable[float], target: float | None, source_fps: float | None) -> list[int]:
    sampler = FpsSampler(target)
    return [i for i, t in enumerate(times) if sampler.take(t, source_fps)]


@pytest.mark.parametrize("anchor", [0.0, 1_763_840_000.123])  # stream time, epoch seconds
def test_a_25fps_4s_file_at_5fps_gives_20_frames_every_5th(anchor: float) -> None:
    times = [anchor + i / 25 for i in range(100)]
    assert chosen(times, 5, 25) == list(range(0, 100, 5))
    assert chosen(times, 5, None) == list(range(0, 100, 5))  # fps unknown: the same


@pytest.mark.parametrize("target", [25, 30, 1000, None])
def test_a_target_at_or_above_the_source_fps_takes_every_frame(target: float | None) -> None:
    times = [i / 25 for i in range(50)]
    assert chosen(times, target, 25) == list(range(50))


def test_uneven_ratios_are_spread_on_a_grid_without_drift() -> None:
    times = [i / 30 for i in range(90)]  # 3 s at 30 fps
    picks = chosen(times, 7, 30)
    assert len(picks) == 21  # 7 per second, exactly
    gaps = {b - a for a, b in zip(picks, picks[1:], strict=False)}
    assert gaps <= {4, 5}  # 30/7 = 4.29: never two in a row, never a long hole


def test_a_jittery_live_stream_keeps_its_rate() -> None:
    rng = np.random.default_rng(0)
    times = [i / 25 + rng.uniform(-0.001, 0.001) for i in range(250)]
    assert chosen(times, 12.5, 25) == list(range(0, 250, 2))


def test_a_gap_is_not_followed_by_a_burst_and_going_back_restarts() -> None:
    times = [0.0, 0.04, 0.08, 5.0, 5.04, 5.08, 5.2, 1.0, 1.04]
    assert chosen(times, 10, 25) == [0, 3, 6, 7]


def test_the_sampler_refuses_a_nonpositive_fps() -> None:
    with pytest.raises(BadInput, match="fps must be > 0"):
        FpsSampler(0)
