"""``python -m benchmarks.redis_cost`` for real: a private redis-server, one worker,
Redis's CPU and each command's and Lua script's share per frame."""

from __future__ import annotations

import pytest

from benchmarks import redis_cost
from benchmarks.sandbox import run_measure


def test_the_cost_by_command_and_by_script() -> None:
    frames = 128
    res = run_measure(lambda sb: redis_cost.measure(sb, "noop", frames, aof=True))
    assert isinstance(res, dict), res
    assert res["frames_per_s"] > 0
    assert 0 < res["main_thread_us_per_frame"] <= res["cpu_us_per_frame"] + 1
    # every frame is pushed once (inside the enqueue's Lua call: commandstats counts it)
    assert res["commands"]["lpush"]["calls_per_frame"] == pytest.approx(1.0)
    scripts = res["scripts"]
    for name in ("pop (POP_MANY)", "enqueue (ENQUEUE)", "result write"):
        assert scripts[name]["calls"] > 0 and scripts[name]["us_per_frame"] > 0, name
    # the producer enqueues many frames a call, the worker pops several a call
    assert scripts["enqueue (ENQUEUE)"]["calls"] <= frames / 8
    assert scripts["pop (POP_MANY)"]["calls"] < frames


def test_the_enqueue_ab_and_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    med = redis_cost.enqueue_ab(frames=320, pairs=1)
    assert set(med) == {"lua", "split"} and min(med.values()) > 0
    with pytest.raises(SystemExit):
        redis_cost.main(["--frames", "10"])
    assert "--frames must be >= 64" in capsys.readouterr().err
