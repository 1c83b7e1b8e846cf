"""``framepool bench peers``'s report from a fixture: the figures (medians, ratios
against the direct call), the latest block, the replicas in the command and the
block, the docs section and its history rows, and the printed summary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from benchmarks import peers_report


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


def test_a_gpu_run_has_its_own_latest_block_and_leaves_the_cpus_alone(
    report: dict[str, Any], tmp_path: Path
) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    peers_report.update_docs(report, doc)  # a CPU run first
    cpu_block = doc.read_text().split(peers_report.BEGIN)[1].split(peers_report.END)[0]
    gpu = copy.deepcopy(report)
    gpu["date"] = "2030-02-01 00:00 UTC"
    gpu["machine"]["gpu"] = "NVIDIA H100 80GB HBM3"
    gpu["config"].update(device="cuda:0", model="resnet50", max_batch_size=64, clients=8,
                         limit="gpu.LimitLoop")  # fmt: skip
    for _ in range(2):
        peers_report.update_docs(gpu, doc)
    text = doc.read_text()
    assert text.split(peers_report.BEGIN)[1].split(peers_report.END)[0] == cpu_block
    assert text.count(peers_report.GPU_HEADING) == 1 and text.count(peers_report.GPU_BEGIN) == 1
    block = text.split(peers_report.GPU_BEGIN)[1].split(peers_report.GPU_END)[0]
    assert "Run 2030-02-01 00:00 UTC" in block
    assert "- model resnet50, device NVIDIA H100 80GB HBM3 (cuda:0)" in block
    assert "driven from 8 client processes" in block and "`bench gpu`'s loop" in block
    assert "batch cap 64" in block
    assert text.index(peers_report.GPU_END) < text.index("### History (peers)")
    history = text.split(peers_report.HIST_BEGIN)[1].split(peers_report.HIST_END)[0]
    assert [ln[:22] for ln in history.splitlines() if ln.startswith("| 2030-")] == [
        "| 2030-01-01 00:00 UTC",
        "| 2030-02-01 00:00 UTC",
        "| 2030-02-01 00:00 UTC",
    ]
    cpu_again = copy.deepcopy(report)
    cpu_again["date"] = "2030-03-01 00:00 UTC"
    peers_report.update_docs(cpu_again, doc)  # and a CPU run leaves the GPU's alone
    text = doc.read_text()
    assert "Run 2030-03-01" in text.split(peers_report.BEGIN)[1].split(peers_report.END)[0]
    assert "Run 2030-02-01" in text.split(peers_report.GPU_BEGIN)[1].split(peers_report.GPU_END)[0]
