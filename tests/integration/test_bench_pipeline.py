"""``framepool bench pipeline`` for real, as a trial (``--no-docs``, few frames): every
scenario runs against real worker processes and a real Redis, the figures are the
medians of the runs and their ratios against the baselines of the same run, and
docs/benchmarks.md is left alone."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks.md"


def test_a_trial_run_measures_every_scenario_and_leaves_the_docs(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    before = hashlib.sha256(DOCS.read_bytes()).hexdigest()
    proc = subprocess.run(
        [sys.executable, "-m", "framepool.cli", "bench", "pipeline", "--frames", "24",
         "--repeats", "1", "--no-docs", "--out", str(out)],
        capture_output=True, text=True, timeout=420, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert hashlib.sha256(DOCS.read_bytes()).hexdigest() == before
    report = json.loads(out.read_text())
    assert set(report["details"]) == {
        "a_loop", "a_e2e", "b_framepool", "b_framepool_2", "b_plain_solo", "b_plain_threads",
        "c_latency", "c_plain_latency",
    }  # fmt: skip
    figs = report["figures"]
    for key in ("a", "b_solo", "b_two", "c_p50"):
        f = figs[key]
        assert len(f["runs"]) == 1 and f["median"] == f["runs"][0] > 0
        assert f["ratio"] == pytest.approx(f["median"] / f["baseline_median"], abs=1e-3)
    lat = report["details"]["c_latency"][0]
    assert lat["frames"] == 12 and lat["e2e_p50_ms"] >= lat["added_p50_ms"] > 0
    assert "(a) resnet18 end to end vs in-process loop" in proc.stdout
    assert "docs untouched" in proc.stdout
