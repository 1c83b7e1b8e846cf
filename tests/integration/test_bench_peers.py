"""``framepool bench peers`` for real: the command with framepool and the direct call
on a handful of frames, and each peer (Ray Serve, PyTriton) answering a few frames
when it is installed (skipped otherwise: CI installs only ``.[dev]``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from benchmarks import harness, peers_ray, peers_report, peers_triton
from benchmarks.peers_clients import PeerClient, run_closed, session_pids
from benchmarks.producer_procs import ClientProcesses
from benchmarks.sandbox import Sandbox
from framepool.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_with_framepool_and_the_direct_call(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, "-m", "framepool.cli", "bench", "peers", "--frames", "16",
         "--latency-frames", "16", "--repeats", "1", "--peers", "none", "--no-docs",
         "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    figs = report["figures"]
    assert list(figs) == ["direct", "framepool"]
    assert figs["direct"]["fps_ratio"] == 1.0 and figs["direct"]["p50_ratio"] == 1.0
    fp = figs["framepool"]
    assert fp["fps"] > 0 and fp["fps_ratio"] > 0
    assert 0 < fp["e2e_p50_ms"] <= fp["e2e_p99_ms"]
    assert fp["p50_ratio"] == round(fp["e2e_p50_ms"] / figs["direct"]["e2e_p50_ms"], 3)
    assert "added_p50_ms" in fp and fp["closed_batch"] >= 1
    for f in figs.values():  # the time in flight with no forward pass running: every system
        assert 0 <= f["model_idle_p50_ms"] <= f["model_idle_p99_ms"] < f["e2e_p99_ms"]
    assert report["details"]["open"]["framepool"][0]["frames"] == 16
    assert report["peers"] == {"ray": "not selected (--peers)", "triton": "not selected (--peers)"}
    assert "- triton: not selected (--peers)" in proc.stdout
    assert report["config"]["open_fps"] == pytest.approx(
        0.5 * report["config"]["calibration_fps"], abs=0.02
    )


def test_replicas_for_framepool_and_the_direct_call_alike(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, "-m", "framepool.cli", "bench", "peers", "--frames", "16",
         "--latency-frames", "16", "--repeats", "1", "--peers", "none", "--replicas", "2",
         "--no-docs", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"]["replicas"] == 2 and report["config"]["direct_replicas"] == 2
    assert "direct: loading resnet18 on cpu, 2 model thread(s)" in proc.stdout
    assert "framepool: starting 2 worker(s)" in proc.stdout
    for name in ("direct", "framepool"):
        assert report["details"]["open"][name][0]["frames"] == 16
        assert report["figures"][name]["fps"] > 0
    block = peers_report.latest_block(report)
    assert "the direct call 2 model threads sharing one model" in block


def test_client_processes_drive_each_system_and_a_model_of_the_users_choice(
    tmp_path: Path,
) -> None:
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, "-m", "framepool.cli", "bench", "peers", "--model", "noop", "--batch",
         "4", "--clients", "2", "--frames", "32", "--latency-frames", "16", "--repeats", "1",
         "--peers", "none", "--no-docs", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    cfg = report["config"]
    assert (cfg["model"], cfg["max_batch_size"], cfg["clients"]) == ("noop", 4, 2)
    assert cfg["closed_loop_outstanding"] == [16, 32]  # 2-4 batches from each of 2
    assert "--model noop --batch 4" in report["command"] and "--clients 2" in report["command"]
    fp = report["details"]["closed"]["framepool"][0]
    assert fp["frames"] == 32 and 1 <= fp["mean_batch_size"] <= 4
    assert fp["cpu_ms_per_frame"]["client"] > 0  # the client processes' CPU, counted
    opened = report["details"]["open"]["framepool"][0]
    assert opened["frames"] == 16 and opened["e2e_p50_ms"] > 0


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


def _check_a_few_frames(client: PeerClient) -> None:
    jpeg_count = 12
    replies, _ = run_closed(client, jpeg_count, chunk=6)
    assert len(replies) == jpeg_count
    assert all(r.inference_ms > 0 and 1 <= r.batch_size <= 8 for r in replies)
    assert max(r.batch_size for r in replies) > 1  # frames sent together were batched
    assert all(r.completed_at > 0 for r in replies)


def _models_root() -> str:
    return str(Settings().models_root)


@pytest.mark.skipif(peers_ray.missing() is not None, reason=f"ray: {peers_ray.missing()}")
def test_ray_serve_answers_through_the_handle_and_http(sandbox: Sandbox) -> None:
    jpegs = harness.test_frames(4)
    serve = peers_ray.RayServe(sandbox, _models_root(), "cpu", torch.get_num_threads(), 8, 16)
    try:
        assert session_pids(serve.head.pid)  # the whole cluster lives in the head's session
        _check_a_few_frames(peers_ray.RayHandleClient(serve.handle, jpegs))
        http = peers_ray.RayHttpClient(serve.url, jpegs, 16)
        try:
            _check_a_few_frames(http)
        finally:
            http.close()
        # client processes, each a driver of its own (bench peers --clients)
        with ClientProcesses(partial(peers_ray.handle_client, serve.gcs_port), jpegs, 2) as procs:
            replies, _ = procs.run(12, 3)
        assert len(replies) == 12 and all(r.inference_ms > 0 for r in replies)
        sid = serve.head.pid
    finally:
        serve.close()
    assert session_pids(sid) == []  # nothing of Ray left running


@pytest.mark.skipif(
    peers_triton.missing() is not None, reason=f"nvidia-pytriton: {peers_triton.missing()}"
)
def test_pytriton_answers_over_grpc_and_http(sandbox: Sandbox) -> None:
    jpegs = harness.test_frames(4)
    server = peers_triton.TritonServer(sandbox, _models_root(), "cpu", torch.get_num_threads(), 8)
    for proto in ("grpc", "http"):
        client = peers_triton.TritonClient.of(server, proto, jpegs)
        try:
            _check_a_few_frames(client)
        finally:
            client.close()
    factory = partial(peers_triton.TritonClient, "grpc", server.grpc_port, server.model_id)
    with ClientProcesses(factory, jpegs, 2) as procs:  # bench peers --clients
        replies, _ = procs.run(12, 3)
    assert len(replies) == 12 and all(r.inference_ms > 0 for r in replies)
    sid = server.child.pid
    assert len(session_pids(sid)) >= 2  # the child and tritonserver (and its stub)
    server.close()
    assert session_pids(sid) == []
