"""``framepool bench gpu`` for real on the CPU (``--device cpu``, the no-op model):
the limit, framepool with one and two worker processes and plain Celery's
``bench.infer`` all answer, and the figures are the medians of the runs. On a GPU
the same command measures resnet50 in fp16 (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_report
from benchmarks.gpu_meters import steady_window

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_on_the_cpu_with_the_noop_model(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "-m", "framepool.cli", "bench", "gpu", "--device", "cpu", "--model",
         "noop", "--batch", "8", "--frames", "96", "--repeats", "2", "--workers", "1,2",
         "--clients", "2", "--no-docs", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"]["precision"] == "fp32" and report["config"]["jpeg_on_device"] is False
    off = "off (no GPU has two workers)"  # CUDA_MPS=auto: no daemon for CPU workers
    assert report["config"]["mps"] == {"1": off, "2": off}
    assert f"- MPS (CUDA_MPS): 1 worker(s) {off}; 2 worker(s) {off}" in gpu_report.latest_block(
        report
    )
    runs = report["details"]
    assert sorted(runs) == ["framepool_1", "framepool_2", "plain_celery"]
    for name, rs in runs.items():
        assert len(rs) == 2, name
        for r in rs:
            assert r["frames"] == (64 if name == "plain_celery" else 96)  # plain: at least 64
            assert r["steady_fps"] > 0 and r["limit_fps"] > 0
            assert r["ratio"] == round(r["steady_fps"] / r["limit_fps"], 3)
            assert r["gpu_util_percent"] is None  # no GPU, no NVML reading
            # CPU of the processes that did the work: every worker, every producer
            assert r["cpu_ms_per_frame"]["worker"] > 0 and r["cpu_ms_per_frame"]["producer"] > 0
            assert 0 < r["busiest_cpus"]["producer"] <= 1.05  # one process: one CPU at most
    assert all(r["mean_batch_size"] == 1.0 for r in runs["plain_celery"])
    figs = report["figures"]
    one = figs["systems"]["framepool_1"]
    assert one["steady_fps"] == pytest.approx(
        sorted(r["steady_fps"] for r in runs["framepool_1"])[0] / 2
        + sorted(r["steady_fps"] for r in runs["framepool_1"])[1] / 2,
        abs=0.01,
    )
    assert set(one["cpu_ms_per_frame"]) == {"worker", "producer", "redis"}
    best = figs["best_framepool"]
    assert figs["framepool_vs_plain"] == round(
        figs["systems"][best]["steady_fps"] / figs["systems"]["plain_celery"]["steady_fps"], 2
    )
    assert ">= 3x plain Celery" in proc.stdout and "not measured (no NVML reading)" in proc.stdout


def test_without_cuda_the_command_says_so() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    proc = subprocess.run(
        [sys.executable, "-m", "framepool.cli", "bench", "gpu", "--no-docs"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout


def test_bad_options_are_refused_clearly() -> None:
    for argv, message in ((["--workers", "0"], "--workers must be"),
                          (["--device", "tpu"], "--device must be cpu or cuda:N"),
                          (["--model", "nope"], "nope")):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "framepool.cli", "bench", "gpu", *argv],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr, argv


def test_the_steady_window_and_the_goal_lines() -> None:
    assert steady_window([float(t) for t in range(10, 0, -1)]) == (2.0, 10.0)
    report = {
        "details": {
            "framepool_1": [{"steady_fps": 400.0, "ratio": 0.1, "gpu_util_percent": 5.0,
                             "limit_fps": 4000.0, "limit_gpu_util_percent": 40.0,
                             "mean_batch_size": 60.0}],
            "framepool_8": [{"steady_fps": 3600.0, "ratio": 0.9, "gpu_util_percent": 95.0,
                             "limit_fps": 4000.0, "limit_gpu_util_percent": 40.0,
                             "mean_batch_size": 50.0}],
            "plain_celery": [{"steady_fps": 60.0, "ratio": 0.015, "gpu_util_percent": 8.0,
                              "limit_fps": 4000.0, "limit_gpu_util_percent": 40.0,
                              "mean_batch_size": 1.0}],
        }
    }  # fmt: skip
    report["figures"] = gpu_report.build_figures(report)
    assert report["figures"]["best_framepool"] == "framepool_8"
    assert report["figures"]["framepool_vs_plain"] == 60.0
    lines = gpu_report.goal_lines(report)
    assert all(line.endswith(": met") for line in lines), lines
