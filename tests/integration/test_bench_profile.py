"""``framepool bench profile`` for real: one noop worker, a short closed loop with and
without py-spy sampling it, the shares by thread and function in the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_profile_of_a_noop_worker(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, "-m", "framepool.cli", "bench", "profile", "--frames", "300",
         "--rate", "200", "--top", "40", "--no-docs", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"]["model"] == "noop" and report["config"]["mode"] == "gil"
    for run in ("unprofiled", "profiled"):
        assert report[run]["frames"] == 300 and report[run]["steady_fps"] > 0
        assert report[run]["worker_cpu_ms_per_frame"] > 0
    prof = report["profile"]
    assert prof["samples"] > 0
    threads = {t["name"] for t in prof["threads"]}
    assert "MainThread" in threads  # Celery's consumer: the worker's serial stage
    assert abs(sum(t["share"] for t in prof["threads"]) - 1.0) < 0.01
    inclusive = [f["name"] for f in prof["inclusive"]]
    assert any("(celery/" in name for name in inclusive), inclusive
    assert any("(workers/" in name or "(framepool/" in name for name in inclusive), inclusive
    assert "share of samples" in proc.stdout
