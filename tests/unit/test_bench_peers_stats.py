"""``framepool bench peers``'s arithmetic: the open-loop schedule, the statistics
(batch rate, closed and open runs, forward spans, model idle), the turn order, the
CPU split, and the command line's refusal of unknown peers. Nothing here needs Ray
or PyTriton installed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from benchmarks import peers_stats as peers
from benchmarks.peers_clients import Reply
from benchmarks.sandbox import BenchError
from tests.unit.peer_replies import _reply


# ------------------------------------------------------------------ schedule
def test_open_schedule_sends_n_frames_from_every_camera_at_the_total_rate() -> None:
    sched = peers.open_schedule(200, fps=20.0, cameras=4, seed=3)
    assert len(sched) == 200
    times = [t for t, _, _ in sched]
    assert times == sorted(times)
    assert {cam for _, cam, _ in sched} == {0, 1, 2, 3}
    for cam in range(4):  # each camera at fps / cameras: one frame every 0.2 s
        own = [t for t, c, _ in sched if c == cam]
        gaps = {round(b - a, 9) for a, b in zip(own, own[1:], strict=False)}
        assert gaps == {0.2}
        seqs = [s for _, c, s in sched if c == cam]
        assert seqs == list(range(len(seqs)))
    # 200 frames at 20 frames/s in all take ~10 s
    assert 9.5 < times[-1] - times[0] < 10.2


def test_open_schedule_is_seeded_and_cameras_are_not_in_step() -> None:
    a = peers.open_schedule(40, 8.0, 4, seed=1)
    assert a == peers.open_schedule(40, 8.0, 4, seed=1)
    assert a != peers.open_schedule(40, 8.0, 4, seed=2)
    # random phases: the gaps between consecutive sends are not all 1/fps
    gaps = {round(b[0] - a_[0], 6) for a_, b in zip(a, a[1:], strict=False)}
    assert len(gaps) > 1
    with pytest.raises(ValueError):
        peers.open_schedule(0, 8.0, 4)


# ------------------------------------------------------------------ statistics


def test_batch_rate_counts_batches_of_completions_right() -> None:
    from benchmarks.harness import steady_rate

    # batches of 8 every 0.1 s: 80 frames/s, however many batches
    stamps = [10.0 + 0.1 * b for b in range(5) for _ in range(8)]
    assert peers.batch_rate(stamps, 0.0) == pytest.approx(80.0)
    assert steady_rate(stamps, 0.0) == pytest.approx(39 / 0.4)  # the (n-1)/span estimate
    # the warm-up cut may fall inside a batch: that batch's frames are dropped alike
    assert peers.batch_rate(stamps, 0.1) == pytest.approx(80.0)
    # one frame at a time: the same as (n-1)/span
    single = [0.0, 0.5, 1.0, 1.25, 1.5]
    assert peers.batch_rate(single, 0.0) == pytest.approx(steady_rate(single, 0.0))
    with pytest.raises(ValueError):
        peers.batch_rate([1.0] * 8, 0.0)
    with pytest.raises(ValueError):
        peers.batch_rate(stamps, 1.0)


def test_closed_stats_takes_the_rate_after_the_warm_up() -> None:
    # one slow start (1 frame/s), then 20 frames/s for 39 frames
    stamps = [100.0, 101.0] + [101.0 + 0.05 * i for i in range(1, 39)]
    stats = peers.closed_stats([_reply(t) for t in stamps], wall=4.0)
    assert stats["steady_fps"] == pytest.approx(20.0)
    assert stats["wall_fps"] == 10.0
    assert stats["frames"] == 40 and stats["mean_batch_size"] == 8.0


def test_open_stats_percentiles_overhead_and_added_latency() -> None:
    done = [(i, _reply(0.0, inference=20.0, batch=1 + i % 2), 30.0 + i) for i in range(101)]
    x = peers.open_stats(done, late_s=0.0025)
    assert x["frames"] == 101
    assert x["e2e_p50_ms"] == 80.0 and x["e2e_p99_ms"] == 129.0
    assert x["overhead_p50_ms"] == 60.0 and x["overhead_p99_ms"] == 109.0
    assert x["inference_p50_ms"] == 20.0
    assert x["mean_batch_size"] == pytest.approx(1.5, abs=0.01)
    assert x["max_send_lateness_ms"] == 2.5
    assert "added_p50_ms" not in x  # only framepool's replies carry it
    assert "model_idle_p50_ms" not in x  # the replies carry no send time
    fp = [(i, _reply(0.0, added=float(i)), 5.0) for i in range(11)]
    y = peers.open_stats(fp, 0.0)
    assert y["added_p50_ms"] == 5.0 and y["added_p99_ms"] == pytest.approx(9.9)
    with pytest.raises(BenchError):
        peers.open_stats(done[:1], 0.0)


def test_forward_span_ends_before_the_postprocess() -> None:
    r = Reply(completed_at=10.0, inference_ms=40.0, batch_size=2, postprocess_ms=2.0)
    start, end = r.forward_span
    assert end == pytest.approx(9.998) and start == pytest.approx(9.958)


def test_merged_spans_joins_what_overlaps_or_touches() -> None:
    spans = [(5.0, 6.0), (1.0, 2.0), (1.5, 3.0), (3.0, 4.0), (7.0, 7.5)]
    assert peers.merged_spans(spans) == [(1.0, 4.0), (5.0, 6.0), (7.0, 7.5)]
    assert peers.merged_spans([]) == []


def test_model_idle_leaves_out_every_forward_pass_a_frame_waited_for() -> None:
    # batch A: frame 0 alone, forward 10.000-10.050, completed 10.050
    a = Reply(completed_at=10.050, inference_ms=50.0, batch_size=1, sent_at=9.990)
    # batch B: frame 1 (sent while A ran) and frame 2 (sent while the model was idle),
    # forward 10.055-10.105, then 1 ms of postprocess
    b = dict(completed_at=10.106, inference_ms=50.0, batch_size=2, postprocess_ms=1.0)
    f1 = Reply(**b, sent_at=10.010)  # type: ignore[arg-type]
    f2 = Reply(**b, sent_at=10.052)  # type: ignore[arg-type]
    done = [(0, a, 62.0), (1, f1, 98.0), (2, f2, 56.0)]
    idle = peers.model_idle_ms(done)
    # 0: 10 ms before its forward pass, 2 after it; 1: A's last 40 ms and B's 50 ms
    # were the model's; 2: 3 ms before B, 3 after it
    assert idle == pytest.approx([12.0, 8.0, 6.0])
    x = peers.open_stats(done, 0.0)
    assert x["model_idle_p50_ms"] == pytest.approx(8.0)
    assert x["overhead_p50_ms"] == pytest.approx(12.0)  # e2e less its own forward pass
    with pytest.raises(BenchError):
        peers.model_idle_ms([(0, _reply(1.0), 5.0), *done])  # no send time


def test_rotate_gives_every_system_a_turn_first() -> None:
    names = ["direct", "framepool", "ray_http"]
    assert peers.rotate(names, 0) == names
    assert peers.rotate(names, 1) == ["framepool", "ray_http", "direct"]
    assert peers.rotate(names, 3) == names
    assert {tuple(peers.rotate(names, r))[0] for r in range(3)} == set(names)


def test_cpu_split_folds_server_processes() -> None:
    cpu = {"srv:10": 4.0, "srv:11": 1.5, "producer": 2.0, "others_cpus": 0.3}
    assert peers.cpu_split(cpu) == {"server": 5.5, "client": 2.0, "others_cpus": 0.3}
    cpu.update({"cli:20": 1.25, "cli:21": 0.75})  # --clients: the client processes' too
    assert peers.cpu_split(cpu) == {"server": 5.5, "client": 4.0, "others_cpus": 0.3}


def test_an_open_schedule_is_dealt_to_client_processes_by_camera() -> None:
    from benchmarks.producer_procs import by_camera

    sched = peers.open_schedule(40, 100.0, 4)
    parts = by_camera(sched, 3)
    assert sorted(i for part in parts for i, _, _ in part) == list(range(40))  # none lost
    for k, part in enumerate(parts):
        assert {c % 3 for _, _, c in part} == {k}  # a camera stays with one process
        assert [t for _, t, _ in part] == sorted(t for _, t, _ in part)  # in send order
        assert all(sched[i][0] == t and sched[i][1] == c for i, t, c in part)
    assert [len(p) for p in by_camera(sched, 8)[4:]] == [0, 0, 0, 0]  # 4 cameras, 8 processes
    with pytest.raises(ValueError):
        by_camera(sched, 0)


def test_the_plan_keeps_4_to_8_batches_in_flight_or_2_to_4_per_client_process() -> None:
    from benchmarks.peers import Plan

    plan = Plan(64, 32, 1, 0.5, 4, (), 2, "cpu")
    assert (plan.batch, plan.chunk, plan.cuda) == (8, 32, False)  # as before: 32-64
    gpu = Plan(64, 32, 1, 0.5, 4, (), 16, "cuda:0", 1, "resnet50", 64, 8)
    assert (gpu.chunk, gpu.cuda, gpu.model) == (128, True, "resnet50")


def test_the_command_line_names_model_batch_device_and_clients_when_not_the_default() -> None:
    from benchmarks.peers import command_line

    plain = command_line(400, None, 3, 0.5, 4, ("ray", "triton"))
    assert plain == "framepool bench peers --frames 400 --repeats 3 --load 0.5 --cameras 4"
    gpu = command_line(4000, None, 1, 0.5, 4, ("ray", "triton"), model="resnet50", batch=64,
                       device="cuda:0", clients=8)  # fmt: skip
    assert gpu == (
        "framepool bench peers --model resnet50 --batch 64 --device cuda:0 --frames 4000 "
        "--repeats 1 --load 0.5 --cameras 4 --clients 8"
    )


# ------------------------------------------------------------------ command line
def test_cli_refuses_unknown_peers() -> None:
    from framepool.cli import main

    res = CliRunner().invoke(main, ["bench", "peers", "--peers", "ray,torchserve"])
    assert res.exit_code == 2 and "--peers takes ray, triton" in res.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--device", "gpu"], "--device must be cpu or cuda:N, got 'gpu'"),
        (["--device", "cuda:x"], "--device must be cpu or cuda:N"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--batch", "0"], "--batch"),
        (["--clients", "0"], "--clients"),
    ],
)
def test_cli_refuses_a_bad_model_device_batch_or_clients(args: list[str], says: str) -> None:
    from framepool.cli import main

    res = CliRunner().invoke(main, ["bench", "peers", *args])
    assert res.exit_code == 2 and says in res.output


def test_cli_says_there_is_no_cuda_device_when_one_is_asked_for() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    from pathlib import Path

    from benchmarks.peers import main

    assert main(16, 1, Path("/nonexistent/peers.json"), 0.0, device="cuda:0") == 2
