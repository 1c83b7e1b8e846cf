"""The Locust file runs headless against the real gateway and reports the targets.

Short here (a few seconds); ``make load`` runs it for minutes and records the
figures. The latency targets are reported by the run, not asserted in a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.load.conftest import LONG, LoadTarget

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
ROOT = LOCUSTFILE.parents[2]


def test_locust_run_reports_the_targets(load_target: LoadTarget, tmp_path: Path) -> None:
    summary = tmp_path / "locust.json"
    run_time = "120s" if LONG else "8s"
    users = "20" if LONG else "5"
    proc = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", load_target.gateway.url, "--users", users, "--spawn-rate", "5",
            "--run-time", run_time, "--only-summary", "--model-id", "shape_detector",
            "--summary-json", str(summary), "--no-check-targets",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = json.loads(summary.read_text())
    assert figures["requests"] > 0
    assert figures["error_rate"] < 0.01, proc.stderr[-2000:]
    assert set(figures["met"]) == {"p50_ms", "p99_ms", "error_rate"}
    # both user classes ran: the single-model route and /capabilities of MultiModelUser
    assert "/inference [shape_detector]" in proc.stderr + proc.stdout
    artifacts = ROOT / "tests" / "artifacts" / "load"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "locust.json").write_text(json.dumps({"users": int(users), **figures}, indent=2))
