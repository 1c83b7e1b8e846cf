"""``framepool bench sweep``'s plan and arithmetic: the full and quick plans and the
cameras' rate, the Redis-memory figures and kombu's body encoding, and the command
line's refusals."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from benchmarks.sweep import QUICK, Plan, make_plan, per_camera_fps
from benchmarks.sweep_memory import body_encoding, memory_figures


# ------------------------------------------------------------------ plans
def test_plans_and_the_cameras_rate() -> None:
    full, quick = make_plan(False), make_plan(True)
    assert full == Plan() and quick == QUICK
    assert full.cameras == (1, 4, 16, 64, 256) and full.batch_caps == (1, 2, 4, 8, 16)
    assert full.workers == (1, 2, 4) and len(full.sizes) == 4
    assert quick.repeats == 1 and quick.window_s < full.window_s
    assert make_plan(True, repeats=3).repeats == 3
    # the load is shared: every point offers the same total
    plan = make_plan(False, load=0.4)
    assert per_camera_fps(plan, 1, 100.0) == pytest.approx(40.0)
    assert per_camera_fps(plan, 16, 100.0) * 16 == pytest.approx(40.0)
    # a fixed per-camera rate: the total grows with the cameras
    assert per_camera_fps(make_plan(False, camera_fps=2.0), 64, 100.0) == 2.0
    with pytest.raises(ValueError):
        make_plan(False, load=0.0)
    with pytest.raises(ValueError):
        make_plan(False, camera_fps=-1.0)


# ------------------------------------------------------------------ redis memory
def test_memory_figures_are_per_frame_and_against_the_jpeg() -> None:
    x = memory_figures(frames=10, jpeg_bytes=3000.0, message_bytes=1200.0,
                       frame_key_bytes=3000.0, stored_bytes=45_000, used_delta=50_000)  # fmt: skip
    assert x["payload_bytes"] == 4200
    assert x["stored_bytes_per_frame"] == 4500
    assert x["used_bytes_per_frame"] == 5000
    assert x["overhead_bytes_per_frame"] == 2000
    assert x["base64_jpeg_bytes"] == 4000
    assert x["used_ratio"] == pytest.approx(5000 / 3000, abs=1e-3)
    assert x["stored_ratio"] == 1.5
    assert x["payload_ratio"] == 1.4
    with pytest.raises(ValueError):
        memory_figures(frames=0, jpeg_bytes=1.0, message_bytes=1, frame_key_bytes=0,
                       stored_bytes=1, used_delta=1)  # fmt: skip


def test_body_encoding_reads_kombus_envelope() -> None:
    msg = json.dumps({"body": "eA==", "properties": {"body_encoding": "base64"}}).encode()
    assert body_encoding(msg) == "base64"
    assert body_encoding(json.dumps({"properties": {}}).encode()) == "none"
    assert body_encoding(b"\x00 not json") == "?"


# ------------------------------------------------------------------ command line
def test_cli_refuses_unknown_axes_and_two_camera_rates() -> None:
    from framepool.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["bench", "sweep", "--axes", "cameras,gpus"])
    assert res.exit_code == 2 and "--axes takes some of" in res.output
    res = runner.invoke(main, ["bench", "sweep", "--load", "0.5", "--camera-fps", "2"])
    assert res.exit_code == 2 and "give one" in res.output
