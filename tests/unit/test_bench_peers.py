"""``framepool bench peers``: its pure parts (schedule, statistics, ratios, report) and
the in-process pieces (the direct-call baseline's batching, the asyncio bridge).
Nothing here needs Ray or PyTriton installed."""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks import peers_ray, peers_report, peers_triton
from benchmarks import peers_stats as peers
from benchmarks.peers_clients import AsyncBridge, DirectPeer, Reply, run_closed, run_open
from benchmarks.sandbox import BenchError
from framepool.settings import Settings


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
def _reply(at: float, inference: float = 10.0, batch: int = 8, added: float | None = None) -> Reply:
    return Reply(completed_at=at, inference_ms=inference, batch_size=batch, added_ms=added)


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


# ------------------------------------------------------------------ report
def _run(fps: float, batch: float = 8.0, server: float = 50.0) -> dict[str, Any]:
    return {
        "frames": 64,
        "steady_fps": fps,
        "wall_fps": fps,
        "mean_batch_size": batch,
        "cpu_ms_per_frame": {"server": server, "client": 2.0, "others_cpus": 0.05},
    }


def _open(p50: float, p99: float, added: bool = False, idle: float = 3.0) -> dict[str, Any]:
    x: dict[str, Any] = {
        "frames": 32,
        "e2e_p50_ms": p50,
        "e2e_p99_ms": p99,
        "overhead_p50_ms": p50 - 20.0,
        "overhead_p99_ms": p99 - 20.0,
        "inference_p50_ms": 20.0,
        "mean_batch_size": 1.2,
        "model_idle_p50_ms": idle,
        "model_idle_p99_ms": 3 * idle,
        "max_send_lateness_ms": 0.5,
        "cpu_ms_per_frame": {"server": 60.0, "client": 3.0, "others_cpus": 0.1},
    }
    if added:
        x["added_p50_ms"], x["added_p99_ms"] = 6.0, 12.0
    return x


@pytest.fixture
def report() -> dict[str, Any]:
    r: dict[str, Any] = {
        "command": "framepool bench peers --frames 64 --repeats 2 --load 0.5 --cameras 4",
        "date": "2030-01-01 00:00 UTC",
        "machine": {
            "nproc": 2,
            "cpu": "Test CPU",
            "platform": "Linux-test",
            "versions": {
                "python": "3.11",
                "torch": "2",
                "celery": "5",
                "ray": "2.60.0",
                "nvidia-pytriton": "-",
                "numpy": "2.4",
            },  # fmt: skip
        },
        "config": {
            "frames": 64,
            "loop_frames": 64,
            "latency_frames": 32,
            "repeats": 2,
            "load": 0.5,
            "cameras": 4,
            "max_batch_size": 8,
            "batch_wait_ms": 5.0,
            "torch_threads": 2,
            "device": "cpu",
            "jpeg_kb": 72,
            "calibration_fps": 40.0,
            "open_fps": 20.0,
        },  # fmt: skip
        "peers": {"ray": None, "triton": "not installed (pip install -e '.[bench]')"},
        "failed": {"ray_http": "BenchError: boom"},
        "idle_cpus": {"framepool": 0.004, "ray": 0.1},
        "details": {
            "closed": {
                "direct": [_run(40.0, server=0.0), _run(36.0, server=0.0)],
                "framepool": [_run(36.0), _run(27.0)],
                "ray_handle": [_run(20.0), _run(30.0)],
            },
            "open": {
                "direct": [_open(50.0, 100.0), _open(70.0, 140.0)],
                "framepool": [_open(90.0, 200.0, True, 4.0), _open(110.0, 160.0, True, 5.0)],
                "ray_handle": [_open(120.0, 240.0), _open(120.0, 240.0)],
            },
        },
        "runtime_s": 99.0,
    }
    r["figures"] = peers_report.build_figures(r)
    return r


def test_figures_are_medians_and_ratios_against_direct_from_the_same_run(
    report: dict[str, Any],
) -> None:
    f = report["figures"]
    assert list(f) == ["direct", "framepool", "ray_handle"]  # no figures for missing peers
    assert f["direct"]["fps"] == 38.0 and f["direct"]["fps_ratio"] == 1.0
    assert f["framepool"]["fps"] == 31.5
    assert f["framepool"]["fps_ratio"] == pytest.approx(31.5 / 38.0, abs=1e-3)
    assert f["framepool"]["fps_ratio_runs"] == [0.9, 0.75]  # paired by repeat
    assert f["framepool"]["e2e_p50_ms"] == 100.0 and f["framepool"]["p50_ratio"] == 1.667
    assert f["ray_handle"]["p99_ratio"] == 2.0
    assert f["framepool"]["added_p50_ms"] == 6.0
    assert "added_p50_ms" not in f["ray_handle"]
    assert (
        f["framepool"]["model_idle_p50_ms"] == 4.5 and f["framepool"]["model_idle_p99_ms"] == 13.5
    )
    assert f["ray_handle"]["model_idle_p50_ms"] == 3.0
    assert f["framepool"]["cpu_ms_per_frame"]["server"] == 50.0


def test_latest_block_names_every_system_and_why_peers_are_missing(
    report: dict[str, Any],
) -> None:
    text = peers_report.latest_block(report)
    assert "`framepool bench peers --frames 64" in text
    assert "| framepool (worker process, FrameProducer) | 31.5 | 0.83x | 100.0 | 1.67x |" in text
    assert "| Ray Serve @serve.batch, DeploymentHandle | 25.0 | 0.66x | 120.0 | 2.00x |" in text
    assert "- triton: not installed (pip install -e '.[bench]')" in text
    assert "dropped mid-run: BenchError: boom" in text
    assert "p50 6.00 ms, p99 12.00 ms" in text
    assert "(*model idle*): framepool p50 4.50 ms, p99 13.50 ms" in text
    assert "others: direct call 3.00 / 9.00; Ray handle 3.00 / 9.00." in text
    assert "| 4.5 / 13.5 |" in text  # the table's column
    assert "framepool 0.004, ray 0.100" in text
    assert "20.0 frames/s (0.5 x the tight loop's 40.0 frames/s" in text


def test_replicas_are_named_in_the_command_and_the_block(report: dict[str, Any]) -> None:
    from benchmarks.peers import Plan, command_line

    assert command_line(64, None, 1, 0.5, 4, ("ray", "triton")).endswith("--cameras 4")
    assert command_line(64, None, 1, 0.5, 4, ("ray", "triton"), 2).endswith("--replicas 2")
    assert Plan(64, 32, 1, 0.5, 4, (), 2, "cpu", 2).threads_each == 1
    assert Plan(64, 32, 1, 0.5, 4, (), 2, "cpu", 4).threads_each == 1  # at least one
    assert Plan(64, 32, 1, 0.5, 4, (), 8, "cpu").threads_each == 8
    assert "replicas" not in peers_report.latest_block(report)
    report["config"]["replicas"] = 2
    block = peers_report.latest_block(report)
    assert "framepool, Ray and Triton each serve 2 replicas of 1 torch thread(s)" in block
    assert "the direct call one model with 2" in block  # a run from before its replicas
    report["config"]["direct_replicas"] = 2
    assert "the direct call 2 model threads sharing one model" in peers_report.latest_block(report)


def test_update_docs_adds_the_section_once_and_a_history_row_per_run(
    report: dict[str, Any], tmp_path: Path
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## other\n\nkept\n")
    peers_report.update_docs(report, doc)
    report["date"] = "2030-01-02 00:00 UTC"
    peers_report.update_docs(report, doc)
    text = doc.read_text()
    assert text.count("## `framepool bench peers`") == 1
    assert text.count(peers_report.BEGIN) == 1 and "No run recorded yet" not in text
    assert "## other\n\nkept" in text
    history = text.split(peers_report.HIST_BEGIN)[1].split(peers_report.HIST_END)[0]
    rows = [ln for ln in history.splitlines() if ln.startswith("| 2030-")]
    assert len(rows) == 2
    assert "38.0, 31.5 (0.83x), 25.0 (0.66x), -, -, -" in rows[1]
    assert "60.0 / 120.0, 100.0 / 180.0, 120.0 / 240.0, -, -, -" in rows[1]


def test_print_summary(report: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    peers_report.print_summary(report)
    out = capsys.readouterr().out
    assert "framepool (worker process, FrameProducer)" in out and "0.83x" in out
    assert "- triton: not installed" in out


# ------------------------------------------------------------------ peers missing
def test_missing_peers_are_reported_as_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in peers_ray.RAY_ENV:  # missing() sets them: put back whatever was there
        monkeypatch.setenv(key, "x")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "pytriton", None)
    assert peers_ray.missing() == "not installed (pip install -e '.[bench]')"
    assert peers_triton.missing() == "not installed (pip install -e '.[bench]')"


def test_pytriton_with_numpy_2_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    fake = types.ModuleType("pytriton")
    fake_triton = types.ModuleType("pytriton.triton")
    fake_triton.Triton = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pytriton", fake)
    monkeypatch.setitem(sys.modules, "pytriton.triton", fake_triton)
    monkeypatch.setattr(np, "__version__", "2.4.6")
    why = peers_triton.missing()
    assert why is not None and "numpy 2.4.6" in why and "numpy<2" in why
    monkeypatch.setattr(np, "__version__", "1.26.4")
    assert peers_triton.missing() is None


def test_triton_child_gets_this_interpreters_libpython_first() -> None:
    pytest.importorskip("pytriton")
    import sysconfig

    env = peers_triton.server_env(threads=2)
    paths = env["LD_LIBRARY_PATH"].split(":")
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        assert paths[0] == sysconfig.get_config_var("LIBDIR")
    assert any(p.endswith("nvidia_pytriton.libs") for p in paths)
    assert env["OMP_NUM_THREADS"] == "2"


# ------------------------------------------------------------------ in-process pieces
def test_direct_peer_runs_what_is_waiting_as_one_batch_without_waiting_for_more() -> None:
    entered, release = threading.Event(), threading.Event()
    seen: list[list[bytes]] = []

    def service(frames: list[bytes]) -> list[dict[str, Any]]:
        seen.append(list(frames))
        if len(seen) == 1:
            entered.set()
            assert release.wait(10)
        return [
            {"completed_at": time.time(), "inference_ms": 1.0, "batch_size": len(frames)}
            for _ in frames
        ]

    jpegs = [bytes([i]) for i in range(16)]
    peer = DirectPeer(service, jpegs, max_batch=4)
    try:
        first = peer.submit([0])
        assert entered.wait(10)
        rest = peer.submit(range(1, 7))  # six wait while the first runs
        release.set()
        replies = [peer.get(h, 10) for h in first + rest]
    finally:
        peer.close()
    assert seen == [[b"\x00"], [bytes([i]) for i in range(1, 5)], [b"\x05", b"\x06"]]
    assert [r.batch_size for r in replies if r is not None] == [1, 4, 4, 4, 4, 2, 2]


def test_direct_peer_replicas_run_their_batches_side_by_side() -> None:
    entered, release = threading.Event(), threading.Event()
    threads: list[str] = []

    def service(frames: list[bytes]) -> list[dict[str, Any]]:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            entered.set()
            assert release.wait(10)
        return [
            {"completed_at": time.time(), "inference_ms": 1.0, "batch_size": len(frames)}
            for _ in frames
        ]

    peer = DirectPeer(service, [b"a", b"b"], max_batch=4, replicas=2)
    try:
        first = peer.submit([0])
        assert entered.wait(10)
        (second,) = peer.submit([1])  # the other model thread takes it meanwhile
        reply = peer.get(second, 10)
        assert reply is not None and reply.batch_size == 1
        release.set()
        assert peer.get(first[0], 10) is not None
    finally:
        peer.close()
    assert sorted(threads) == ["direct-model-0", "direct-model-1"]
    assert not any(t.is_alive() for t in peer.threads)  # close() ends every model thread


def test_the_tight_loop_shares_the_frames_and_torch_threads_among_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from benchmarks import pipeline_tight_loop as tl

    ran: dict[str, list[int]] = {}
    seen_threads: set[int] = set()

    def runner(settings: Any, jpegs: Any, device: str = "cpu") -> Any:
        def one_batch(start: int, count: int) -> None:
            ran.setdefault(threading.current_thread().name, []).append(count)
            seen_threads.add(torch.get_num_threads())

        return one_batch

    monkeypatch.setattr(tl, "_loop_model", lambda settings, device="cpu": None)
    monkeypatch.setattr(tl, "_batch_runner", runner)
    before = torch.get_num_threads()
    try:
        run = tl.tight_loop(Settings(), [b"x"], 21, 2, replicas=2)
        assert run.frames == 21 and run.steady_fps > 0
        # a warm-up batch of 8 each, then 11 and 10 frames in batches of up to 8
        assert ran == {"tight-loop-0": [8, 8, 3], "tight-loop-1": [8, 8, 2]}
        assert seen_threads == {1}  # 2 torch threads shared out among 2 loops

        def broken(settings: Any, jpegs: Any, device: str = "cpu") -> Any:
            raise RuntimeError("model broke")

        monkeypatch.setattr(tl, "_batch_runner", broken)
        with pytest.raises(RuntimeError, match="model broke"):
            tl.tight_loop(Settings(), [b"x"], 16, 2, replicas=2)
        with pytest.raises(ValueError, match="replicas"):
            tl.tight_loop(Settings(), [b"x"], 16, 2, replicas=0)
    finally:
        torch.set_num_threads(before)


def test_direct_peer_hands_a_model_failure_to_every_frame_of_the_batch() -> None:
    def service(frames: list[bytes]) -> list[dict[str, Any]]:
        raise RuntimeError("model broke")

    peer = DirectPeer(service, [b"x"], max_batch=8)
    try:
        (h,) = peer.submit([0])
        with pytest.raises(RuntimeError, match="model broke"):
            peer.get(h, 10)
    finally:
        peer.close()


def test_async_bridge_result_is_none_until_done() -> None:
    import asyncio

    bridge = AsyncBridge()
    try:

        async def slow() -> int:
            await asyncio.sleep(0.3)
            return 7

        fut = bridge.submit(slow())
        assert bridge.result(fut, 0.01) is None
        assert bridge.result(fut, 10) == 7
    finally:
        bridge.close()


class _EchoClient:
    """Replies at once; counts what it was sent."""

    name = "echo"

    def __init__(self) -> None:
        self.sent: list[int] = []

    def submit(self, indices: Any) -> list[Any]:
        self.sent.extend(indices)
        return [_reply(time.time() + i * 0.01, batch=1) for i in indices]

    def get(self, handle: Any, timeout: float) -> Reply | None:
        reply: Reply = handle
        return reply

    def close(self) -> None:
        pass


def test_drivers_send_every_frame_once_and_read_every_reply() -> None:
    c = _EchoClient()
    replies, wall = run_closed(c, 100, chunk=8)
    assert len(replies) == 100 and c.sent == list(range(100)) and wall >= 0
    c = _EchoClient()
    done, late = run_open(c, [0.0, 0.01, 0.02, 0.02, 0.05])
    assert [i for i, _, _ in done] == [0, 1, 2, 3, 4] and c.sent == [0, 1, 2, 3, 4]
    assert all(ms >= 0 for _, _, ms in done) and late >= 0
    sent = [r.sent_at for _, r, _ in done]
    assert all(t is not None for t in sent) and sent == sorted(sent)  # type: ignore[type-var]


def test_cli_refuses_unknown_peers() -> None:
    from framepool.cli import main

    res = CliRunner().invoke(main, ["bench", "peers", "--peers", "ray,torchserve"])
    assert res.exit_code == 2 and "--peers takes ray, triton" in res.output
