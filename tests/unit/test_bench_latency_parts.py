"""``benchmarks.latency_parts``: a frame's send-to-read time cut into its hops from
the result's stamps, and the part of each hop while no model ran."""

from __future__ import annotations

import pytest

from benchmarks.latency_parts import HOPS, hops, idle_part, parts, summary
from framepool.schemas import InferenceResult, Status, Timings


def _result(enqueued: float, forward_at: float, worker: str = "w0", **ms: float) -> InferenceResult:
    t = Timings(**{"inference": 50.0, "postprocess": 1.0, **ms})
    done = forward_at + (t.inference + t.postprocess) / 1000.0
    return InferenceResult(job_id=f"{worker}-{enqueued}", correlation_id="c", model_id="m",
                           status=Status.ok, timings_ms=t, enqueued_at=enqueued,
                           completed_at=done, worker=worker)  # fmt: skip


def test_hops_are_back_to_back_from_send_to_read() -> None:
    r = _result(1.002, forward_at=1.020, queue=3.0, decode=2.0, preprocess=1.0, batch_wait=4.0,
                host_to_device=1.0)  # fmt: skip
    got = {name: ((b - a) * 1000.0) for name, a, b in hops(r, sent=1.0, read=1.075)}
    assert list(got) == list(HOPS)
    want = {"send": 2.0, "queue": 3.0, "decode": 2.0, "preprocess": 1.0,
            # prepped at 1.008; formed at forward (1.020) - h2d (1) - batch_wait (4): 1.015
            "handoff": 7.0, "batch_wait": 4.0, "forward": 51.0, "post": 1.0, "back": 4.0}  # fmt: skip
    assert got == pytest.approx(want)


def test_stamps_out_of_order_make_empty_hops_not_negative_ones() -> None:
    # a batch_wait longer than the gap before the forward pass (clocks, rounding)
    r = _result(1.0, forward_at=1.005, batch_wait=50.0)
    assert all(b >= a for _, a, b in hops(r, sent=1.0, read=1.1))


def test_idle_part_is_what_no_busy_span_covers() -> None:
    busy = [(1.0, 2.0), (3.0, 4.0)]
    assert idle_part(0.5, 4.5, busy) == pytest.approx(2.0)
    assert idle_part(1.2, 1.8, busy) == 0.0
    assert idle_part(2.0, 3.0, busy) == pytest.approx(1.0)


def test_a_frame_that_waits_for_another_workers_batch_loses_nothing_while_it_runs() -> None:
    busy_one = _result(0.0, forward_at=0.0, inference=100.0)  # the other worker: 0 - 0.1 s
    lone = _result(0.01, forward_at=0.2, worker="w1", queue=20.0)  # queued while w0 ran
    row = parts([(busy_one, 0.0, 0.102), (lone, 0.01, 0.252)])[1]
    assert row["queue"] == pytest.approx(20.0)
    assert row["queue_idle"] == pytest.approx(0.0)  # w0's pass covered it
    assert row["handoff"] == pytest.approx(170.0)  # 0.03 - 0.2 s, of it 0.1 - 0.2 s idle
    assert row["handoff_idle"] == pytest.approx(100.0)
    assert row["forward_idle"] == pytest.approx(0.0)
    assert row["total"] == pytest.approx(242.0)
    assert row["idle"] == pytest.approx(102.0)  # handoff 100, post 1, back 1


def test_each_frame_knows_the_quiet_before_it_and_the_tail_reports_it() -> None:
    sends = [0.0, 0.005, 0.050, 0.052]  # in ms: 0, 5, 50, 52; given out of order
    frames = [(_result(s + 0.001, forward_at=s + 0.010, worker=f"w{i}"), s, s + 0.1)
              for i, s in enumerate(sends)]  # fmt: skip
    rows = parts(frames[::-1])[::-1]
    assert "gap" not in rows[0]  # the first frame sent has no frame before it
    assert [r["gap"] for r in rows[1:]] == pytest.approx([5.0, 45.0, 2.0])
    # the tail (by model idle): the frame after 45 ms of quiet, and one after 25
    base = {**{h: 1.0 for h in HOPS}, **{f"{h}_idle": 0.0 for h in HOPS}, "total": 9.0}
    table = [{**base, "idle": float(i), "gap": 3.0} for i in range(18)]
    table += [{**base, "idle": 30.0, "gap": 45.0}, {**base, "idle": 31.0, "gap": 19.0}]
    s = summary(table, tail_q=90)
    assert s["tail_frames"] == 2
    assert s["gap"] == {"p50": pytest.approx(3.0), "tail_p50": pytest.approx(32.0),
                        "tail_min": pytest.approx(19.0), "tail_quiet": 1, "tail_with_gap": 2}  # fmt: skip


def test_summary_takes_the_tail_by_model_idle_time() -> None:
    rows = [{**{h: 1.0 for h in HOPS}, **{f"{h}_idle": 0.0 for h in HOPS}, "total": 9.0,
             "idle": float(i)} for i in range(100)]  # fmt: skip
    rows[-1]["queue_idle"] = 7.0
    s = summary(rows, tail_q=98)  # the cut: 97.02 ms; frames 98 and 99
    assert s["frames"] == 100 and s["tail_frames"] == 2
    assert s["queue_idle"]["tail_mean"] == pytest.approx(3.5)
    assert s["idle"]["p50"] == pytest.approx(49.5)
    with pytest.raises(ValueError):
        summary([])


def test_out_of_range_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.latency_parts import main

    for argv in (["--frames", "1"], ["--fps", "0"], ["--workers", "0", "--out", "x.json"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "--workers >= 1, --fps > 0 and --frames >= 2" in capsys.readouterr().err
